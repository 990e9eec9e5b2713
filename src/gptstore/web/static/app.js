// The store front's router and its browsing pages (home, search, compare). Each page
// is a function that draws into <main> from the JSON API; an error anywhere is shown
// in the page with what to do, never as a blank page.

import { getJSON, query } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import { modelCard } from "./widgets.js";

const main = () => document.getElementById("main");

function modelList(models, empty) {
  if (!models.length) return h("p", { class: "muted empty" }, empty);
  return h("ul", { class: "model-grid" }, models.map(modelCard));
}

// -- home -------------------------------------------------------------------------------

async function home(root) {
  const box = h("form", { class: "hero", role: "search", action: "/search" },
    h("h1", {}, "Find, try and fine-tune language models"),
    h("label", { for: "home-q", class: "sr-only" }, "Search models"),
    h("input", { id: "home-q", name: "q", type: "search", autofocus: true,
      placeholder: "Search models, e.g. sentiment, pirate, translation…" }),
    h("button", { type: "submit" }, "Search"));
  root.append(box);
  const shelves = await getJSON("/api/categories");
  const total = shelves.data.reduce((n, c) => n + c.models.length, 0);
  if (!total) {
    root.append(h("section", { class: "empty-store" },
      h("h2", {}, "The store is empty"),
      h("p", {}, "Add the built-in base model with ", h("code", {}, "gptstore models pull HuggingFaceTB/SmolLM2-135M-Instruct"),
        ", import your own with ", h("code", {}, "gptstore models import PATH --name NS/NAME"),
        ", or ", h("a", { href: "/finetune" }, "fine-tune one"), ".")));
    return;
  }
  for (const shelf of shelves.data) {
    root.append(h("section", { class: "shelf", "aria-labelledby": `shelf-${shelf.key}` },
      h("div", { class: "shelf-head" },
        h("h2", { id: `shelf-${shelf.key}` }, shelf.title),
        h("a", { href: `/search${query(shelf.filter)}` }, "See all →")),
      h("p", { class: "muted" }, shelf.description),
      modelList(shelf.models, "No models here yet.")));
  }
}

// -- search -----------------------------------------------------------------------------

const SORTS = [["trending", "Trending"], ["downloads", "Most downloads"],
  ["likes", "Most likes"], ["rating", "Best rated"], ["newest", "Newest"],
  ["updated", "Recently updated"], ["name", "Name"]];
const FILTERS = [["task", "Task"], ["base", "Base model"], ["tag", "Tag"],
  ["license", "License"], ["owner", "Owner"]];

async function search(root) {
  const params = new URLSearchParams(window.location.search);
  const form = h("form", { class: "search-form", role: "search" },
    h("div", { class: "field grow" },
      h("label", { for: "q" }, "Search"),
      h("input", { id: "q", name: "q", type: "search", value: params.get("q") || "",
        placeholder: "words in names, descriptions, tags, cards" })),
    h("div", { class: "field" },
      h("label", { for: "task" }, "Task"),
      h("select", { id: "task", name: "task" },
        [["", "any"], ["causal-lm", "generation (causal-lm)"], ["classification", "classification"]]
          .map(([v, t]) => h("option", { value: v, selected: params.get("task") === v }, t)))),
    FILTERS.slice(1).map(([key, label]) => h("div", { class: "field" },
      h("label", { for: key }, label),
      h("input", { id: key, name: key, value: params.get(key) || "", size: 12 }))),
    h("div", { class: "field" },
      h("label", { for: "sort" }, "Sort"),
      h("select", { id: "sort", name: "sort" }, SORTS.map(([v, t]) =>
        h("option", { value: v, selected: (params.get("sort") || "trending") === v }, t)))),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const [k, v] of new FormData(form).entries()) if (v) next[k] = v;
    navigate(`/search${query(next)}`);
  });
  root.append(h("h1", {}, "Models"), form);
  const results = h("div", { id: "results", "aria-live": "polite" });
  root.append(results);
  const api = {};
  for (const key of ["q", "task", "base", "tag", "license", "owner", "sort", "cursor"]) {
    if (params.get(key)) api[key] = params.get(key);
  }
  api.limit = 24;
  const page = await getJSON(`/api/search${query(api)}`);
  results.append(modelList(page.data,
    "No model matches. Try fewer words, another filter, or clear the search."));
  const nav = h("nav", { class: "pager", "aria-label": "Pages" });
  if (params.get("cursor")) {
    nav.append(h("a", { href: "#", onclick: (e) => { e.preventDefault(); window.history.back(); } },
      "← Previous"));
  }
  if (page.has_more) {
    const next = new URLSearchParams(params);
    next.set("cursor", page.next_cursor);
    nav.append(h("a", { href: `/search?${next}`, rel: "next" }, "Next →"));
  }
  results.append(nav);
}

// -- compare ------------------------------------------------------------------------------

async function compare(root) {
  const { comparePage } = await import("./playground.js");
  await comparePage(root);
}

// -- router -------------------------------------------------------------------------------

const ROUTES = [
  [/^\/$/, home, "gptstore"],
  [/^\/search$/, search, "Models · gptstore"],
  [/^\/models\/([^/]+)\/([^/]+)$/, async (root, m) => (await import("./model.js")).modelPage(root, m[1], m[2]), null],
  [/^\/compare$/, compare, "Compare · gptstore"],
  [/^\/leaderboards$/, async (root) => (await import("./leaderboards.js")).suitesPage(root), "Leaderboards · gptstore"],
  [/^\/leaderboards\/([^/]+)$/, async (root, m) => (await import("./leaderboards.js")).leaderboardPage(root, m[1]), null],
  [/^\/finetune$/, async (root) => (await import("./finetune.js")).wizard(root), "Fine-tune · gptstore"],
  [/^\/jobs\/([^/]+)$/, async (root, m) => (await import("./finetune.js")).jobPage(root, m[1]), "Job · gptstore"],
  [/^\/me\/(models|files|jobs)$/, async (root, m) => (await import("./mine.js")).minePage(root, m[1]), "Mine · gptstore"],
  [/^\/me\/keys$/, async (root) => (await import("./account.js")).keysPage(root), "API keys · gptstore"],
  [/^\/login$/, async (root) => (await import("./account.js")).loginPage(root), "Sign in · gptstore"],
];

export async function render() {
  import("./account.js").then((account) => account.drawAccountSlot());
  const root = clear(main());
  delete root.dataset.ready;
  const path = decodeURIComponent(window.location.pathname);
  for (const [pattern, page, title] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    if (title) document.title = title;
    try {
      await page(root, match);
    } catch (err) {
      if (err.status === 401) {
        // signed out on a store that needs a key: say so, not the API's wording
        const next = encodeURIComponent(window.location.pathname + window.location.search);
        root.replaceChildren(h("h1", {}, "Sign in"), h("p", { role: "alert" },
          "This store shows its models to signed-in users. ",
          h("a", { href: `/login?next=${next}` }, "Sign in"), " to go on."));
      } else {
        if (err.status === 404) document.title = "Not found · gptstore";
        root.append(errorBox(err, err.status === 404
          ? "Check the name, or go back to the store's home."
          : err.status === 400 ? "Check the address: one of its parameters is not one this page takes."
            : "Reload the page; if it persists, look at the server's log."));
      }
    }
    root.dataset.ready = "1";
    return;
  }
  document.title = "Not found · gptstore";
  root.append(errorBox(new Error(`no page at ${path}`), "Go back to the store's home."));
  root.dataset.ready = "1";
}

export function navigate(url) {
  window.history.pushState({}, "", url);
  render();
}

// Same-origin links to pages are handled here (no full reload); others load normally.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a");
  if (!link || event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey
      || event.shiftKey || link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin) return;
  if (url.pathname.startsWith("/api/") || url.pathname.startsWith("/v1/")
      || url.pathname.startsWith("/docs") || url.pathname.startsWith("/static/")) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener("popstate", render);
render();
