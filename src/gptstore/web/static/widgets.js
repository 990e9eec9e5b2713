// Pieces more than one page draws.

import { formatCount, formatNumber, h } from "./dom.js";

export function modelUrl(name, version) {
  return `/models/${name}${version ? `@${version}` : ""}`;
}

export function stars(rating, count) {
  if (!count) return "unrated";
  return `★ ${rating.toFixed(1)} (${count})`;
}

// A search result card: name, task, base, headline metric, downloads, likes, rating.
export function modelCard(m) {
  const metrics = m.latest ? Object.entries(m.latest.metrics) : [];
  const headline = metrics.length ? `${metrics[0][0]} ${formatNumber(metrics[0][1])}` : null;
  return h("li", { class: "model-card" },
    h("a", { href: modelUrl(m.name), class: "model-name" }, m.name),
    h("p", { class: "model-desc" }, m.description || "No description."),
    h("div", { class: "model-facts" },
      h("span", { class: "pill" }, m.task),
      m.latest && m.latest.base ? h("span", { title: "base model" }, `↳ ${m.latest.base}`) : null,
      headline ? h("span", { class: "metric" }, headline) : null),
    h("div", { class: "model-stats" },
      h("span", { title: "downloads" }, `⬇ ${formatCount(m.downloads)}`),
      h("span", { title: "likes" }, `♥ ${formatCount(m.likes)}`),
      h("span", { title: "rating" }, stars(m.rating, m.rating_count))));
}

