// The playground: streamed chat for generative models (system prompt, temperature, max
// tokens, stop; Stop aborts the request, which frees the server's slot), label
// probabilities as bars for classifiers, and two models side by side on one prompt.

import { getJSON, query, sendJSON, stream } from "./api.js";
import { bars } from "./charts.js";
import { errorBox, h } from "./dom.js";

function field(id, label, input, hint) {
  return h("div", { class: "field" }, h("label", { for: id }, label), input,
    hint ? h("small", { class: "muted" }, hint) : null);
}

function settingsFields(prefix) {
  return h("div", { class: "settings" },
    field(`${prefix}-temperature`, "Temperature",
      h("input", { id: `${prefix}-temperature`, type: "number", min: 0, max: 2, step: 0.1, value: 0.7 })),
    field(`${prefix}-max-tokens`, "Max tokens",
      h("input", { id: `${prefix}-max-tokens`, type: "number", min: 1, max: 4096, step: 1, value: 128 })),
    field(`${prefix}-stop`, "Stop",
      h("input", { id: `${prefix}-stop`, type: "text", placeholder: "e.g. \\n\\n" }), "optional"));
}

function readSettings(root, prefix) {
  const get = (name) => root.querySelector(`#${prefix}-${name}`).value;
  // an empty field is left to the server's default, not sent as 0
  const body = {};
  if (get("temperature").trim() !== "") body.temperature = Number(get("temperature"));
  if (get("max-tokens").trim() !== "") body.max_tokens = Number(get("max-tokens"));
  const stop = get("stop").replace(/\\n/g, "\n");
  if (stop) body.stop = [stop];
  return body;
}

// Stream one chat answer into `out`; resolves when done, aborted or failed.
async function streamInto(out, model, messages, settings, signal) {
  let text = "";
  out.classList.add("streaming");
  try {
    await stream("/v1/chat/completions", { model, messages, ...settings }, (chunk) => {
      const choice = chunk.choices && chunk.choices[0];
      const delta = choice && choice.delta && choice.delta.content;
      if (delta) {
        text += delta;
        out.textContent = text;
      }
      if (choice && choice.finish_reason) out.dataset.finish = choice.finish_reason;
    }, signal);
  } catch (err) {
    if (err.name === "AbortError") {
      out.dataset.finish = "stopped";
      out.append(h("span", { class: "muted" }, " [stopped]"));
    } else {
      out.replaceChildren(errorBox(err));
      out.dataset.finish = "error";
    }
  } finally {
    out.classList.remove("streaming");
  }
  return text;
}

function chat(model) {
  const history = [];
  const log = h("div", { class: "chat-log", "aria-live": "polite" });
  const system = h("textarea", { id: "pg-system", rows: 2, placeholder: "You are a helpful assistant." });
  const input = h("textarea", { id: "pg-input", rows: 3, placeholder: "Write a message…" });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
  const reset = h("button", { type: "button", class: "secondary" }, "Clear");
  let controller = null;
  const form = h("form", { class: "playground" },
    field("pg-system", "System prompt", system),
    log,
    field("pg-input", "Message", input),
    settingsFields("pg"),
    h("div", { class: "actions" }, send, stop, reset));
  stop.addEventListener("click", () => controller && controller.abort());
  reset.addEventListener("click", () => { history.length = 0; log.replaceChildren(); });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    history.push({ role: "user", content: text });
    input.value = "";
    log.append(h("div", { class: "msg user" }, h("b", {}, "You"), h("p", {}, text)));
    const out = h("p", { class: "answer" });
    log.append(h("div", { class: "msg assistant" }, h("b", {}, "Model"), out));
    const messages = system.value.trim()
      ? [{ role: "system", content: system.value.trim() }, ...history] : [...history];
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const answer = await streamInto(out, model, messages, readSettings(form, "pg"), controller.signal);
    // a failed turn is not part of the conversation the next message continues
    if (out.dataset.finish === "error") history.pop();
    else history.push({ role: "assistant", content: answer });
    controller = null;
    send.disabled = false;
    stop.disabled = true;
    input.focus();
  });
  return form;
}

function classify(model) {
  const input = h("textarea", { id: "pg-text", rows: 3, placeholder: "A text to classify…" });
  const out = h("div", { class: "classify-out", "aria-live": "polite" });
  const form = h("form", { class: "playground" },
    field("pg-text", "Text", input),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Classify")), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.value.trim()) return;
    out.replaceChildren(h("p", { class: "muted" }, "Classifying…"));
    try {
      const reply = await sendJSON("POST", "/v1/classifications", { model, input: input.value });
      const result = reply.data[0];
      out.replaceChildren(h("p", { class: "label" }, "Label: ", h("strong", {}, result.label)),
        bars(result.probabilities.map((p) => [p.label, p.probability,
          `${(p.probability * 100).toFixed(1)}%`]), { label: "Label probabilities" }));
    } catch (err) {
      out.replaceChildren(errorBox(err));
    }
  });
  return form;
}

export function playground(model, task) {
  const box = h("div", {});
  box.append(task === "classification" ? classify(model) : chat(model));
  box.append(h("p", { class: "muted small" }, "Compare it with another model: ",
    h("a", { href: `/compare${query({ a: model })}` }, "side by side"), "."));
  return box;
}

// -- compare -----------------------------------------------------------------------------

export async function comparePage(root) {
  const params = new URLSearchParams(window.location.search);
  const page = await getJSON(`/api/search${query({ task: "causal-lm", sort: "downloads", limit: 200 })}`);
  const names = page.data.map((m) => m.name);
  const pick = (id, label, value) => field(id, label, h("input", { id, list: "cmp-models",
    value: value || "", required: true, placeholder: "namespace/name" }));
  const prompt = h("textarea", { id: "cmp-prompt", rows: 3, required: true, placeholder: "The same prompt for both models" });
  const outs = [h("p", { class: "answer", id: "cmp-out-a" }), h("p", { class: "answer", id: "cmp-out-b" })];
  const heads = [h("h3", {}, "Model A"), h("h3", {}, "Model B")];
  const run = h("button", { type: "submit" }, "Run both");
  const stop = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
  let controller = null;
  stop.addEventListener("click", () => controller && controller.abort());
  const form = h("form", { class: "playground" },
    h("datalist", { id: "cmp-models" }, names.map((n) => h("option", { value: n }))),
    h("div", { class: "two" }, pick("cmp-a", "Model A", params.get("a") || names[0]),
      pick("cmp-b", "Model B", params.get("b") || names[1])),
    field("cmp-prompt", "Prompt", prompt), settingsFields("cmp"),
    h("div", { class: "actions" }, run, stop),
    h("div", { class: "two" }, h("div", {}, heads[0], outs[0]), h("div", {}, heads[1], outs[1])));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const models = [form.querySelector("#cmp-a").value.trim(), form.querySelector("#cmp-b").value.trim()];
    const messages = [{ role: "user", content: prompt.value }];
    const settings = readSettings(form, "cmp");
    controller = new AbortController();
    run.disabled = true;
    stop.disabled = false;
    models.forEach((m, i) => { heads[i].textContent = m; outs[i].textContent = ""; });
    await Promise.all(models.map((m, i) => streamInto(outs[i], m, messages, settings, controller.signal)));
    controller = null;
    run.disabled = false;
    stop.disabled = true;
  });
  root.append(h("h1", {}, "Compare two models"),
    h("p", { class: "muted" }, "Both answer the same prompt at once, streamed side by side."),
    names.length ? form : h("p", { class: "muted empty" }, "No generative model in the store yet."));
}
