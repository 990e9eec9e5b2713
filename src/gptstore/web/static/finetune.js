// The fine-tune wizard (upload -> report -> preview -> settings -> start) and the job
// page (status, live loss and accuracy charts from polled events, checkpoints, cancel,
// the new model's link). Everything goes through the OpenAI-compatible files and jobs
// routes plus /api/files/{id}/report.

import { getJSON, query, request, sendJSON } from "./api.js";
import { bars, lineChart } from "./charts.js";
import { duration, errorBox, fill, h } from "./dom.js";
import { modelUrl } from "./widgets.js";

const STEPS = ["Upload", "Check", "Preview", "Settings", "Start"];
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function stepper(current) {
  return h("ol", { class: "steps", "aria-label": "Steps" }, STEPS.map((s, i) =>
    h("li", { class: i === current ? "current" : "", "aria-current": i === current ? "step" : null },
      `${i + 1}. ${s}`)));
}

// -- the report and the preview -------------------------------------------------------------

function reportView(report) {
  const box = h("div", { id: "report" });
  box.append(h("p", { class: report.ok ? "ok" : "error", role: report.ok ? "status" : "alert" },
    report.ok
      ? `${report.filename}: ${report.examples} examples read as ${report.format} (task ${report.task}).`
      : `${report.filename} cannot be trained on: ${report.error_count} error${report.error_count === 1 ? "" : "s"}. Fix the lines below and upload the file again.`));
  if (report.errors.length) {
    box.append(h("h3", {}, "Errors"), h("ul", { class: "issues errors" }, report.errors.map((e) =>
      h("li", {}, e.line ? h("strong", {}, `line ${e.line}: `) : null, e.message))));
  }
  if (report.warnings.length) {
    box.append(h("h3", {}, "Warnings"), h("ul", { class: "issues" }, report.warnings.map((e) =>
      h("li", {}, e.line ? h("strong", {}, `line ${e.line}: `) : null, e.message))));
  }
  const facts = [["examples", report.examples], ["duplicates", report.duplicates]];
  if (report.tokens) facts.push(["tokens", `${report.tokens.total} (mean ${report.tokens.mean.toFixed(0)} per example, max ${report.tokens.max})`]);
  if (report.estimated_training_seconds) facts.push(["estimated training time", duration(report.estimated_training_seconds)]);
  box.append(h("table", { class: "kv" }, h("tbody", {}, facts.map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, String(v)))))));
  if (report.label_distribution) {
    const total = Object.values(report.label_distribution).reduce((a, b) => a + b, 0) || 1;
    box.append(h("h3", {}, "Labels"), bars(Object.entries(report.label_distribution).map(
      ([label, n]) => [label, n / total, String(n)]), { label: "Examples per label" }));
  }
  if (!report.tokens) {
    box.append(h("p", { class: "muted small" }, "Token counts and the time estimate need the base model's tokenizer: `gptstore data validate FILE --base NAME` prints them."));
  }
  return box;
}

// The first examples as the chosen base sees them (its chat template applied, by the
// same encoder training uses), the tokens that carry the loss highlighted.
async function previewView(fileId, base) {
  const preview = await getJSON(`/api/files/${fileId}/preview${query({ base, limit: 3 })}`);
  if (!preview.examples.length) return h("p", { class: "muted" }, "No example to show.");
  const t = preview.tokens;
  const facts = t ? h("table", { class: "kv", id: "preview-facts" }, h("tbody", {},
    h("tr", {}, h("th", { scope: "row" }, "tokens"), h("td", {}, `${t.total} in all; ${t.min} to ${t.max} an example (mean ${Math.round(t.mean)})`)),
    h("tr", {}, h("th", { scope: "row" }, "longer than the context"), h("td", {}, `${preview.truncated} (cut in training)`)),
    preview.estimated_seconds_per_epoch !== null ? h("tr", {}, h("th", { scope: "row" }, "estimated time"),
      h("td", {}, `about ${duration(preview.estimated_seconds_per_epoch)} an epoch`,
        preview.estimate_basis ? h("br") : null,
        preview.estimate_basis ? h("small", { class: "muted" }, preview.estimate_basis) : null)) : null)) : null;
  return h("div", { class: "examples" }, facts,
    h("p", { class: "muted" }, `As ${preview.base} sees them: highlighted tokens are the targets (the loss is computed on them only).`),
    preview.examples.map((ex) => h("div", { class: "example" },
      h("small", { class: "muted" }, `line ${ex.line} · ${ex.tokens} tokens${ex.label ? ` · label ${ex.label}` : ""}`),
      h("pre", {}, ex.segments.map((seg) => seg.loss
        ? h("mark", { class: "loss-token" }, seg.text) : seg.text)))));
}

// -- settings ----------------------------------------------------------------------------

const AUTO_HELP = {
  n_epochs: "auto: 3, more for small files, fewer for large ones (OpenAI's rule)",
  batch_size: "auto: 8, or 16 from 1000 examples on; smaller for small files, so the run makes at least 100 steps",
  learning_rate_multiplier: "auto: the method's learning rate (LoRA 2e-4, 5e-4 for classification; full 2e-5; head 1e-3)",
};

function settingsForm(report, bases, chosen, onStart) {
  const task = report.task || "causal-lm";
  const form = h("form", { id: "settings" },
    h("div", { class: "field" }, h("label", { for: "ft-base" }, "Base model"),
      h("select", { id: "ft-base", required: true }, bases.map((m) =>
        h("option", { value: m.name, selected: m.name === chosen }, m.name)))),
    h("div", { class: "field" }, h("label", { for: "ft-task" }, "Task"),
      h("select", { id: "ft-task" }, ["causal-lm", "classification"].map((t) =>
        h("option", { value: t, selected: t === task }, t))),
      h("small", { class: "muted" }, "Read from the file's format.")),
    h("div", { class: "field" }, h("label", { for: "ft-method" }, "Method"),
      h("select", { id: "ft-method" },
        h("option", { value: "lora" }, "LoRA: small adapter on the base (fast, small)"),
        h("option", { value: "full" }, "Full: every weight"),
        h("option", { value: "head" }, "Head only (classification)"))),
    Object.entries(AUTO_HELP).map(([key, help]) => h("div", { class: "field" },
      h("label", { for: `ft-${key}` }, key.replaceAll("_", " ")),
      h("input", { id: `ft-${key}`, value: "auto", inputmode: "decimal",
        oninput: (e) => e.target.setCustomValidity("") }),
      h("small", { class: "muted" }, help))),
    h("div", { class: "field" }, h("label", { for: "ft-suffix" }, "Name suffix"),
      h("input", { id: "ft-suffix", maxlength: 64, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*",
        title: "letters, digits, '.', '_' or '-', starting with a letter or digit", placeholder: "e.g. pirate" }),
      h("small", { class: "muted" }, "The new model is named local/<base>-<suffix>-<id>.")),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "ft-start" }, "Start fine-tuning")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = (id) => form.querySelector(`#ft-${id}`).value.trim();
    const hp = {};
    for (const key of Object.keys(AUTO_HELP)) {
      const v = value(key);
      const input = form.querySelector(`#ft-${key}`);
      const number = Number(v);
      const integer = key !== "learning_rate_multiplier";
      const ok = v === "" || v === "auto" ||
        (Number.isFinite(number) && number > 0 && (!integer || Number.isInteger(number)));
      input.setCustomValidity(ok ? "" : `${key.replaceAll("_", " ")}: auto or ${integer ? "a whole number" : "a number"} above 0`);
      if (!ok) { input.reportValidity(); return; }
      hp[key] = v === "" || v === "auto" ? "auto" : number;
    }
    onStart({
      model: value("base"), task: value("task"), adaptation: value("method"),
      suffix: value("suffix") || undefined,
      method: { type: "supervised", supervised: { hyperparameters: hp } },
    });
  });
  return form;
}

// -- the wizard ----------------------------------------------------------------------------

export async function wizard(root) {
  root.append(h("h1", {}, "Fine-tune a model"));
  const steps = h("div", {});
  const body = h("div", {});
  root.append(steps, body);
  const show = (i, ...children) => { steps.replaceChildren(stepper(i)); fill(body, ...children); };

  const input = h("input", { id: "ft-file", type: "file", accept: ".jsonl,.json,.csv,.tsv,.txt", required: true });
  const status = h("div", { "aria-live": "polite" });
  const upload = h("form", {},
    h("div", { class: "field" }, h("label", { for: "ft-file" }, "Training file"), input,
      h("small", { class: "muted" }, "Chat JSONL (OpenAI format), prompt/completion JSONL, text+label JSONL/CSV/TSV, or plain text.")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Upload and check")), status);
  upload.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) return;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", input.files[0]);
    status.replaceChildren(h("p", { class: "muted" }, "Uploading…"));
    try {
      const file = await (await request("POST", "/v1/files", { form })).json();
      await checked(file);
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  });
  show(0, upload);

  async function checked(file) {
    const report = await getJSON(`/api/files/${file.id}/report`);
    const again = h("button", { type: "button", class: "secondary", onclick: () => { input.value = ""; status.replaceChildren(); show(0, upload); } }, "Upload another file");
    if (!report.ok) {
      show(1, reportView(report), h("div", { class: "actions" }, again));
      return;
    }
    const next = h("button", { type: "button", onclick: () => preview(file, report) }, "Next: preview");
    show(1, reportView(report), h("div", { class: "actions" }, again, next));
  }

  async function baseModels() {
    const page = await getJSON(`/api/search${query({ sort: "downloads", limit: 200 })}`);
    return page.data.filter((m) => m.task === "causal-lm" && (!m.latest || m.latest.kind === "full"));
  }

  async function preview(file, report) {
    const bases = await baseModels();
    if (!bases.length) {
      show(2, h("p", { class: "error", role: "alert" }, "There is no base model in the store. Pull one with `gptstore models pull HuggingFaceTB/SmolLM2-135M-Instruct`, then reload."));
      return;
    }
    const wanted = new URLSearchParams(window.location.search).get("base");
    let base = bases.some((m) => m.name === wanted) ? wanted : bases[0].name;
    const shown = h("div", { "aria-live": "polite" });
    const draw = async () => {
      shown.replaceChildren(h("p", { class: "muted" }, "Encoding…"));
      try {
        shown.replaceChildren(await previewView(file.id, base));
      } catch (err) {
        shown.replaceChildren(errorBox(err));
      }
    };
    const select = h("select", { id: "ft-preview-base", onchange: (e) => { base = e.target.value; draw(); } },
      bases.map((m) => h("option", { value: m.name, selected: m.name === base }, m.name)));
    const next = h("button", { type: "button", onclick: () => settings(file, report, bases, base) }, "Next: settings");
    show(2, h("div", { class: "field" }, h("label", { for: "ft-preview-base" }, "Base model"), select),
      shown, h("div", { class: "actions" }, next));
    await draw();
  }

  function settings(file, report, bases, base) {
    const errors = h("div", { "aria-live": "polite" });
    show(3, settingsForm(report, bases, base, async (payload) => {
      errors.replaceChildren(h("p", { class: "muted" }, "Starting…"));
      try {
        const job = await sendJSON("POST", "/v1/fine_tuning/jobs", { ...payload, training_file: file.id });
        const { navigate } = await import("./app.js");
        navigate(`/jobs/${job.id}`);
      } catch (err) {
        errors.replaceChildren(errorBox(err, err.param ? `Check the field "${err.param}".` : null));
      }
    }), errors);
  }
}

// -- the job page ----------------------------------------------------------------------------

function series(events, keys) {
  return keys.map((key) => ({
    name: key.replaceAll("_", " "),
    points: events.filter((e) => e.type === "metrics" && typeof e.data[key] === "number")
      .map((e) => [e.data.step, e.data[key]]),
  })).filter((s) => s.points.length);
}

export async function jobPage(root, jobId) {
  const head = h("div", {});
  const charts = h("div", { class: "charts", id: "job-charts" });
  const checkpoints = h("div", {});
  const events = h("ol", { class: "events", reversed: true });
  root.append(head,
    h("section", { class: "panel" }, h("h2", {}, "Training curves"), charts),
    h("section", { class: "panel" }, h("h2", {}, "Checkpoints"), checkpoints),
    h("section", { class: "panel" }, h("h2", {}, "Events"), events));

  const draw = (job, evts, cps) => {
    const link = job.fine_tuned_model && job.status === "succeeded"
      ? h("p", {}, "New model: ", h("a", { href: modelUrl(job.fine_tuned_model), id: "job-model" }, job.fine_tuned_model)) : null;
    const cancel = TERMINAL.has(job.status) ? null : h("button", { type: "button", class: "secondary", id: "job-cancel",
      onclick: async () => { try { await sendJSON("POST", `/v1/fine_tuning/jobs/${jobId}/cancel`, {}); } catch (err) { head.append(errorBox(err)); } } }, "Cancel job");
    const step = evts.filter((e) => e.type === "metrics").map((e) => e.data).pop();
    fill(head,
      h("h1", {}, `Fine-tuning job ${job.id}`),
      h("p", {}, "Status: ", h("span", { class: `status ${job.status}`, id: "job-status" }, job.status),
        step ? ` · step ${step.step} of ${step.total_steps}` : "",
        job.estimated_finish && !TERMINAL.has(job.status) ? ` · about ${Math.max(0, Math.round(job.estimated_finish - Date.now() / 1000))} s left` : ""),
      h("p", { class: "muted" }, `Base ${job.model} · file ${job.training_file} · epochs ${job.hyperparameters.n_epochs} · batch ${job.hyperparameters.batch_size} · lr multiplier ${job.hyperparameters.learning_rate_multiplier}`),
      job.error ? errorBox(new Error(job.error.message), job.error.param ? `Field: ${job.error.param}` : null) : null,
      link, cancel);
    const loss = series(evts, ["train_loss", "valid_loss"]);
    const acc = series(evts, ["train_mean_token_accuracy", "train_accuracy", "valid_accuracy", "valid_mean_token_accuracy"]);
    fill(charts, lineChart(loss, { title: "Loss" }), acc.length ? lineChart(acc, { title: "Accuracy" }) : null);
    checkpoints.replaceChildren(cps.length ? h("ul", {}, cps.map((c) => h("li", {},
      h("a", { href: modelUrl(c.fine_tuned_model_checkpoint) }, c.fine_tuned_model_checkpoint), ` · step ${c.step_number}`)))
      : h("p", { class: "muted" }, "None yet: the last epochs' weights become checkpoints."));
    events.replaceChildren(...evts.slice().reverse().slice(0, 200).map((e) => h("li", { class: e.level },
      `${new Date(e.created_at * 1000).toLocaleTimeString()} · ${e.message}`)));
  };

  // Poll until the job ends: events are few per second (the worker batches them).
  for (;;) {
    const [job, evts, cps] = await Promise.all([
      getJSON(`/v1/fine_tuning/jobs/${jobId}`),
      getJSON(`/v1/fine_tuning/jobs/${jobId}/events?limit=1000`),
      getJSON(`/v1/fine_tuning/jobs/${jobId}/checkpoints?limit=100`),
    ]);
    if (!document.body.contains(head)) return;  // the user went to another page
    draw(job, evts.data.slice().reverse(), cps.data);
    if (TERMINAL.has(job.status)) return;
    await new Promise((resolve) => { setTimeout(resolve, 1000); });
  }
}


