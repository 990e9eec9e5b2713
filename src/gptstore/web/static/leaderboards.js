// Leaderboards: the evaluation suites (GET /api/suites) and, per suite, the models
// ranked on it (GET /api/leaderboards/{suite}): base models first (each fine-tune's
// starting point), then by the suite's metric, every row linked to its model page and
// its base, with the digest of the data it was scored on.

import { getJSON } from "./api.js";
import { formatNumber, h, plural, timeAgo } from "./dom.js";
import { modelUrl } from "./widgets.js";

const TASKS = { classification: "classification", "causal-lm": "text (causal LM)",
  qa: "question answering", translation: "translation", code: "code" };

function number(value) {
  return value === null || value === undefined ? "–" : formatNumber(value);
}

function modelLink(ref) {
  const [name, version] = ref.split("@");  // "namespace/name@N": that version's page
  return h("a", { href: modelUrl(name, version) }, ref);
}

export async function suitesPage(root) {
  root.append(h("h1", {}, "Leaderboards"),
    h("p", { class: "muted" }, "Each suite is a data set, a prompt format and a metric. ",
      "Models evaluated on the same data are ranked together; the base models come first, ",
      "so every fine-tune can be read against where it started."));
  const suites = (await getJSON("/api/suites")).data;
  if (!suites.length) {
    root.append(h("p", { class: "muted empty" }, "No suites yet. Install the built-in ones with ",
      h("code", {}, "gptstore suites builtin"), " or add your own with ",
      h("code", {}, "gptstore suites add NAME --data FILE --task TASK"), "."));
    return;
  }
  root.append(h("div", { class: "table-wrap" }, h("table", { class: "list", id: "suites" },
    h("thead", {}, h("tr", {}, ["suite", "task", "data", "metric", "licence"].map((c) => h("th", {}, c)))),
    h("tbody", {}, suites.map((s) => h("tr", {},
      h("td", {}, h("a", { href: `/leaderboards/${encodeURIComponent(s.name)}` }, s.name)),
      h("td", {}, TASKS[s.task] || s.task),
      h("td", {}, `${s.description} (${plural(s.examples, "example")})`),
      h("td", {}, `${s.metric} (${s.higher_is_better ? "higher" : "lower"} is better)`),
      h("td", {}, s.license || "–")))))));
}

export async function leaderboardPage(root, name) {
  const board = await getJSON(`/api/leaderboards/${encodeURIComponent(name)}`);
  const suite = board.suite;
  document.title = `${suite.name} leaderboard · gptstore`;
  root.append(h("p", {}, h("a", { href: "/leaderboards" }, "← All leaderboards")),
    h("h1", {}, `${suite.name} leaderboard`),
    h("p", {}, suite.description),
    h("p", { class: "muted" }, `${TASKS[suite.task] || suite.task}, ${plural(suite.examples, "example")}, `,
      `ranked by ${suite.metric} (${suite.higher_is_better ? "higher" : "lower"} is better). Data `,
      h("code", { title: suite.data_digest }, suite.data_digest.slice(0, 19)),
      suite.source ? ` from ${suite.source}` : "", suite.license ? `; licence: ${suite.license}` : "", "."));
  if (!board.rows.length) {
    root.append(h("p", { class: "muted empty" }, "No model has been evaluated on this suite yet. ",
      "Run ", h("code", {}, `gptstore eval NAME --suite ${suite.name}`),
      ", or fine-tune with ", h("code", {}, `--eval-suite ${suite.name}`), "."));
    return;
  }
  // the other numbers every row has, after the ranking metric
  const extra = [];
  for (const row of board.rows) {
    for (const [key, value] of Object.entries(row.metrics)) {
      if (key !== suite.metric && typeof value === "number" && !extra.includes(key)
          && extra.length < 4 && !["examples", "count", "problems", "samples", "passed"].includes(key)) extra.push(key);
    }
  }
  const bases = Object.fromEntries(board.rows.filter((r) => r.is_base).map((r) => [r.ref, r.score]));
  const head = ["#", "model", "base", suite.metric, "vs base", ...extra, "asked as", "evaluated"];
  root.append(h("div", { class: "table-wrap" }, h("table", { class: "list leaderboard", id: "leaderboard" },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, board.rows.map((row) => {
      const start = row.base ? bases[row.base] : undefined;
      const delta = row.score !== null && start !== undefined && start !== null ? row.score - start : null;
      const better = delta !== null && (suite.higher_is_better ? delta > 0 : delta < 0);
      return h("tr", { class: row.is_base ? "base-row" : "", dataset: { ref: row.ref } },
        h("td", {}, row.rank),
        h("td", {}, modelLink(row.ref), row.is_base ? h("span", { class: "tag" }, "base") : null,
          row.lineage.method ? h("span", { class: "muted" }, ` ${row.lineage.method}`) : null),
        h("td", {}, row.base ? modelLink(row.base) : "–"),
        h("td", { class: "score" }, number(row.score)),
        h("td", { class: delta === null ? "muted" : better ? "up" : "down" },
          delta === null ? "–" : `${delta > 0 ? "+" : ""}${number(delta)}`),
        extra.map((key) => h("td", {}, number(row.metrics[key]))),
        h("td", {}, row.mode),
        h("td", { title: row.evaluated_at }, timeAgo(row.evaluated_at)));
    })))));
}
