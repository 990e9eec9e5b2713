// A model's page: header with stats, like and rating, the playground, the rendered card,
// metrics, loss curves, lineage, the model tree (its fine-tunes), versions and files,
// and usage snippets.

import { getJSON, query, sendJSON, whoami } from "./api.js";
import { bars, lineChart } from "./charts.js";
import { errorBox, formatBytes, formatCount, formatNumber, h, plural, timeAgo, trustedHtml } from "./dom.js";
import { modelCard, modelUrl } from "./widgets.js";
import { playground } from "./playground.js";

function section(id, title, ...children) {
  return h("section", { class: "panel", id, "aria-labelledby": `${id}-title` },
    h("h2", { id: `${id}-title` }, title), ...children);
}

function metricsTable(metrics) {
  const rows = [];
  for (const [key, value] of Object.entries(metrics)) {
    if (key === "curves") continue;
    if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) {
        if (typeof v === "number" || typeof v === "boolean") rows.push([`${key} · ${k}`, v]);
      }
    } else if (typeof value === "number") {
      rows.push([key, value]);
    }
  }
  if (!rows.length) return h("p", { class: "muted" }, "No metrics were recorded for this version.");
  return h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, formatNumber(v))))));
}

function evaluations(version) {
  const results = version.evaluations || [];
  if (!results.length) {
    return h("p", { class: "muted" }, "Not evaluated on a suite yet: ",
      h("code", {}, `gptstore eval ${version.ref} --suite NAME`), " (see the ",
      h("a", { href: "/leaderboards" }, "leaderboards"), ").");
  }
  return h("table", { class: "kv", id: "evaluations" }, h("tbody", {}, results.map((r) =>
    h("tr", {}, h("th", { scope: "row" }, h("a", { href: `/leaderboards/${encodeURIComponent(r.suite)}` }, r.suite)),
      h("td", {}, `${r.metric} ${r.score === null ? "–" : formatNumber(r.score)}`,
        h("span", { class: "muted" }, ` (${r.mode}, ${plural(r.examples, "example")}${r.current ? "" : "; on older data, not ranked"})`))))));
}

function curves(metrics) {
  const all = (metrics && metrics.curves) || {};
  const pick = (names) => names.filter((n) => all[n] && all[n].length)
    .map((n) => ({ name: n.replace("_", " "), points: all[n] }));
  const loss = pick(["train_loss", "valid_loss"]);
  const acc = pick(["train_accuracy", "valid_accuracy", "valid_token_accuracy"]);
  if (!loss.length && !acc.length) {
    return h("p", { class: "muted" }, "No training curves: this version was imported, not fine-tuned here.");
  }
  return h("div", { class: "charts" },
    loss.length ? lineChart(loss, { title: "Loss" }) : null,
    acc.length ? lineChart(acc, { title: "Accuracy" }) : null);
}

function lineage(version) {
  const lin = version.lineage || {};
  const rows = [];
  if (version.base) {
    const [name, number] = version.base.split("@");
    rows.push(["base", h("a", { href: modelUrl(name, number) }, version.base)]);
  }
  if (lin.dataset && typeof lin.dataset === "object") {
    const d = lin.dataset;
    rows.push(["training data", `${d.name || d.path || "dataset"} · ${d.examples ?? "?"} examples · ${d.digest || ""}`]);
  }
  for (const key of ["source", "method", "task", "seed", "precision", "code_version"]) {
    if (lin[key] !== undefined && lin[key] !== null) rows.push([key, String(lin[key])]);
  }
  if (lin.hyperparameters && typeof lin.hyperparameters === "object") {
    const auto = new Set(lin.auto || []);
    const hp = Object.entries(lin.hyperparameters)
      .filter(([, v]) => v !== null && typeof v !== "object")
      .map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k),
        h("td", {}, String(v), auto.has(k) ? h("span", { class: "pill small", title: "chosen by auto" }, "auto") : null)));
    rows.push(["hyper-parameters", h("details", {}, h("summary", {}, `${hp.length} values`),
      h("table", { class: "kv" }, h("tbody", {}, hp)))]);
  }
  if (!rows.length) return h("p", { class: "muted" }, "No lineage recorded (an imported model).");
  return h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

function versionsTable(model, shown) {
  return h("div", {}, model.versions.slice().reverse().map((v) => h("details",
    { class: "version", open: v.number === shown.number },
    h("summary", {}, h("a", { href: modelUrl(model.name, v.number) }, `v${v.number}`),
      ` · ${v.kind} · ${formatBytes(v.size)} · ${timeAgo(v.created_at)}`),
    h("div", { class: "table-wrap" }, h("table", { class: "files" },
      h("thead", {}, h("tr", {}, h("th", {}, "file"), h("th", {}, "size"), h("th", {}, "sha256"))),
      h("tbody", {}, v.files.map((f) => h("tr", {},
        h("td", {}, h("a", { href: `/api/models/${model.name}/versions/${v.number}/files/${f.path}`, download: f.path }, f.path)),
        h("td", { class: "num" }, formatBytes(f.size)),
        h("td", { class: "digest" }, f.digest.slice(7, 19))))))))));
}

function snippets(model, ref) {
  const origin = window.location.origin;
  const generative = model.task !== "classification";
  const items = generative ? [
    ["Python (openai)", `from openai import OpenAI\n\nclient = OpenAI(base_url="${origin}/v1", api_key="unused")\nreply = client.chat.completions.create(\n    model="${ref}",\n    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)`],
    ["curl", `curl ${origin}/v1/chat/completions \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${ref}", "messages": [{"role": "user", "content": "Hello!"}]}'`],
    ["gptstore CLI", `gptstore generate ${ref} "Hello!"\ngptstore chat ${ref}`],
  ] : [
    ["Python (httpx)", `import httpx\n\nreply = httpx.post("${origin}/v1/classifications",\n                   json={"model": "${ref}", "input": "I loved it"})\nprint(reply.json()["data"][0]["label"])`],
    ["curl", `curl ${origin}/v1/classifications \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${ref}", "input": "I loved it"}'`],
    ["gptstore CLI", `gptstore classify ${ref} "I loved it"`],
  ];
  const auto = generative ? "AutoModelForCausalLM" : "AutoModelForSequenceClassification";
  items.push(["transformers (after export)", `gptstore models export ${ref} ./export${model.latest && model.latest.kind === "adapter" ? " --merged" : ""}\n\nfrom transformers import AutoTokenizer, ${auto}\ntokenizer = AutoTokenizer.from_pretrained("./export")\nmodel = ${auto}.from_pretrained("./export")`]);
  return h("div", { class: "snippets" }, items.map(([title, code]) => h("div", { class: "snippet" },
    h("div", { class: "snippet-head" }, h("h3", {}, title),
      h("button", { type: "button", class: "small", onclick: (e) => {
        navigator.clipboard?.writeText(code).then(() => { e.target.textContent = "Copied"; },
          () => { e.target.textContent = "Select and copy"; });
      } }, "Copy")),
    h("pre", {}, h("code", {}, code)))));
}

function reactionsBox(model, initial) {
  const box = h("div", { class: "reactions" });
  const draw = (r) => {
    box.replaceChildren(
      h("button", { type: "button", class: r.liked ? "like on" : "like", "aria-pressed": String(r.liked),
        onclick: () => act(() => sendJSON("PUT", `/api/models/${model.name}/like`, { liked: !r.liked })) },
      `♥ ${r.liked ? "Liked" : "Like"} · ${formatCount(r.likes)}`),
      h("div", { class: "stars", role: "radiogroup", "aria-label": "Your rating" },
        [1, 2, 3, 4, 5].map((n) => h("button", { type: "button", role: "radio",
          class: r.my_stars && n <= r.my_stars ? "star on" : "star",
          "aria-checked": String(r.my_stars === n), "aria-label": `${n} star${n > 1 ? "s" : ""}`,
          onclick: () => act(() => sendJSON("PUT", `/api/models/${model.name}/rating`, { stars: n })) }, "★"))),
      h("p", { class: "rating-summary" }, r.rating_count
        ? `${r.rating.toFixed(1)} out of 5 from ${r.rating_count} rating${r.rating_count > 1 ? "s" : ""}`
        : "Not rated yet"),
      bars([5, 4, 3, 2, 1].map((n) => [`${n}★`,
        r.rating_count ? r.histogram[String(n)] / r.rating_count : 0, String(r.histogram[String(n)])]),
      { label: "Ratings by stars" }));
  };
  const act = async (call) => {
    try {
      draw(await call());
    } catch (err) {
      box.append(errorBox(err));
    }
  };
  draw(initial);
  return box;
}

function editListing(model) {
  const description = h("textarea", { id: "edit-description", rows: 3 }, model.description);
  const tags = h("input", { id: "edit-tags", value: model.tags.join(", ") });
  const visibility = h("select", { id: "edit-visibility" },
    ...["public", "org", "private"].map((v) => h("option", { value: v }, v)));
  visibility.value = model.visibility;
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { id: "edit-form" },
    h("div", { class: "field" }, h("label", { for: "edit-description" }, "Description"), description),
    h("div", { class: "field" }, h("label", { for: "edit-tags" }, "Tags"), tags,
      h("small", { class: "muted" }, "Comma-separated, e.g. chat, qa")),
    h("div", { class: "field" }, h("label", { for: "edit-visibility" }, "Visibility"), visibility,
      h("small", { class: "muted" },
        "public: everyone; org: the owner's organisations; private: the owner alone")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Save")), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const update = {
        description: description.value,
        tags: tags.value.split(",").map((t) => t.trim()).filter(Boolean),
      };
      // publishing / unpublishing needs an admin key: sent only when it changes
      if (visibility.value !== model.visibility) update.visibility = visibility.value;
      await sendJSON("PATCH", `/api/models/${model.name}`, update);
      const { render } = await import("./app.js");
      await render();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  });
  return h("details", {}, h("summary", {}, "Edit the listing and visibility"), form);
}

export async function modelPage(root, namespace, nameAndVersion) {
  const [name, versionPart] = nameAndVersion.split("@");
  const full = `${namespace}/${name}`;
  document.title = `${full} · gptstore`;
  const model = await getJSON(`/api/models/${full}`);
  if (!model.versions.length) throw new Error(`model ${full} has no versions yet`);
  const wanted = versionPart ? Number(versionPart) : model.versions[model.versions.length - 1].number;
  const version = model.versions.find((v) => v.number === wanted);
  if (!version) {
    throw Object.assign(new Error(`model ${full} has no version ${versionPart} (versions: ${model.versions.map((v) => v.number).join(", ")})`), { status: 404 });
  }
  const ref = versionPart ? `${full}@${wanted}` : full;
  const [me, reactions, card, tree] = await Promise.all([
    whoami(),
    getJSON(`/api/models/${full}/reactions`),
    getJSON(`/api/models/${full}/card.html${query({ version: wanted })}`).catch((err) => err),
    getJSON(`/api/search${query({ base: full, sort: "downloads", limit: 12 })}`),
  ]);

  root.append(h("header", { class: "model-head" },
    h("h1", {}, h("span", { class: "muted" }, `${namespace} / `), name,
      versionPart ? h("span", { class: "pill" }, `v${wanted}`) : null),
    h("p", { class: "model-desc" }, model.description || "No description."),
    h("div", { class: "model-facts" },
      h("span", { class: "pill" }, model.task),
      model.license ? h("span", { class: "pill" }, model.license) : null,
      model.visibility !== "public" ? h("span", { class: "pill warn" }, model.visibility) : null,
      model.tags.map((t) => h("a", { class: "pill tag", href: `/search${query({ tag: t })}` }, `#${t}`)),
      version.base ? h("span", {}, "fine-tuned from ", h("a", { href: modelUrl(...version.base.split("@")) }, version.base)) : null),
    h("div", { class: "model-stats" },
      h("span", {}, `⬇ ${formatCount(model.downloads)} downloads`),
      h("span", {}, `▶ ${formatCount(model.requests)} requests`),
      h("span", {}, `updated ${timeAgo(model.updated_at)}`))));

  const layout = h("div", { class: "model-layout" });
  const left = h("div", { class: "model-main" });
  const right = h("aside", { class: "model-side" });
  layout.append(left, right);
  root.append(layout);

  right.append(section("rate", "Like and rate", reactionsBox(model, reactions)));
  if (me && me.namespaces.includes(namespace)) {
    right.append(section("edit", "Your model", editListing(model)));
  }
  right.append(section("use", "Use this model", snippets(model, ref)));

  left.append(section("playground", "Playground", playground(ref, model.task)));
  left.append(section("card", "Model card", card instanceof Error
    ? errorBox(card, "This version's card could not be read; its files are listed below.")
    : trustedHtml(card.html)));
  left.append(section("metrics", "Metrics", metricsTable(version.metrics)));
  left.append(section("evaluations", "Evaluations", evaluations(version)));
  left.append(section("curves", "Training curves", curves(version.metrics)));
  left.append(section("lineage", "Lineage", lineage(version)));
  left.append(section("tree", `Fine-tunes of ${full}`, tree.data.length
    ? h("ul", { class: "model-grid" }, tree.data.map(modelCard))
    : h("p", { class: "muted" }, "No model in the store was fine-tuned from this one yet. ",
      h("a", { href: `/finetune${query({ base: full })}` }, "Fine-tune it"), ".")));
  left.append(section("versions", "Versions and files", versionsTable(model, version)));
}
