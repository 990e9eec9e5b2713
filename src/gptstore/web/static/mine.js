// My models, files and jobs: the files and jobs routes answer only the caller's; the
// models are those of the caller's namespace (GET /api/me), where fine-tunes land.

import { getJSON, query, request, whoami } from "./api.js";
import { errorBox, formatBytes, h, timeAgo } from "./dom.js";
import { modelCard } from "./widgets.js";

async function models(root) {
  const me = await whoami();
  if (!me || !me.owner) {
    root.append(h("p", { class: "muted empty" }, h("a", { href: "/login" }, "Sign in"), " to see your models."));
    return;
  }
  const page = await getJSON(`/api/search${query({ owner: me.owner, sort: "newest", limit: 100 })}`);
  root.append(page.data.length ? h("ul", { class: "model-grid" }, page.data.map(modelCard))
    : h("p", { class: "muted empty" }, "You have no models yet. ",
      h("a", { href: "/finetune" }, "Fine-tune one"), " from a base in the store."));
}

async function files(root) {
  const list = await getJSON("/v1/files");
  if (!list.data.length) {
    root.append(h("p", { class: "muted empty" }, "No files. Upload one in the ",
      h("a", { href: "/finetune" }, "fine-tune wizard"), "."));
    return;
  }
  const table = h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["file", "id", "size", "uploaded", "check", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.data.map((f) => {
      const remove = h("button", { type: "button", class: "small secondary", onclick: async () => {
        try {
          await request("DELETE", `/v1/files/${f.id}`);
          row.remove();
        } catch (err) { row.after(h("tr", {}, h("td", { colspan: 6 }, errorBox(err)))); }
      } }, "Delete");
      const row = h("tr", {}, h("td", {}, f.filename), h("td", {}, h("code", {}, f.id)),
        h("td", {}, formatBytes(f.bytes)), h("td", {}, timeAgo(new Date(f.created_at * 1000).toISOString())),
        h("td", {}, f.status === "error" ? h("span", { class: "status failed" }, "errors") : "ok"),
        h("td", {}, remove));
      return row;
    })));
  root.append(h("div", { class: "table-wrap" }, table));
}

async function jobs(root) {
  const list = await getJSON("/v1/fine_tuning/jobs?limit=100");
  if (!list.data.length) {
    root.append(h("p", { class: "muted empty" }, "No jobs. Start one in the ",
      h("a", { href: "/finetune" }, "fine-tune wizard"), "."));
    return;
  }
  root.append(h("div", { class: "table-wrap" }, h("table", { class: "list" },
    h("thead", {}, h("tr", {}, ["job", "base", "status", "model", "created"].map((c) => h("th", {}, c)))),
    h("tbody", {}, list.data.map((j) => h("tr", {},
      h("td", {}, h("a", { href: `/jobs/${j.id}` }, j.id)), h("td", {}, j.model),
      h("td", {}, h("span", { class: `status ${j.status}` }, j.status)),
      h("td", {}, j.fine_tuned_model && j.status === "succeeded" ? h("a", { href: `/models/${j.fine_tuned_model}` }, j.fine_tuned_model) : ""),
      h("td", {}, timeAgo(new Date(j.created_at * 1000).toISOString()))))))));
}

const SECTIONS = { models: ["My models", models], files: ["My files", files], jobs: ["My jobs", jobs] };

export async function minePage(root, section) {
  const [title, draw] = SECTIONS[section];
  document.title = `${title} · gptstore`;
  root.append(h("h1", {}, title));
  await draw(root);
}
