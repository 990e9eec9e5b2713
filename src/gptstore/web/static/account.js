// Who is signed in, the login page and the API-key page.
//
// A login exchanges a password for an API key of the user's own (`POST /api/session`,
// api/store/session.py); the key is kept in localStorage and sent as a Bearer token by
// api.js like any client's, so the browser has no other way in than the SDK.

import { getJSON, request, sendJSON, setApiKey, whoami } from "./api.js";
import { errorBox, h, timeAgo } from "./dom.js";

async function go(url) {
  (await import("./app.js")).navigate(url);
}

function signInLink() {
  const here = window.location.pathname + window.location.search;
  return h("a", { href: `/login?next=${encodeURIComponent(here)}`, id: "sign-in" }, "Sign in");
}

export async function drawAccountSlot() {
  const slot = document.getElementById("account-slot");
  if (!slot) return;
  let me;
  try {
    me = await whoami();
  } catch (_) {
    slot.replaceChildren();  // the page itself shows the server's error
    return;
  }
  if (!me || !me.user) {
    slot.replaceChildren(signInLink());
  } else if (me.mode === "local") {
    slot.replaceChildren(h("a", { href: "/me/keys", class: "muted", id: "account-name",
      title: "Local mode: one user, no login (loopback address, no users created)" }, "local"));
  } else {
    const signOut = h("button", { type: "button", class: "small secondary", id: "sign-out",
      onclick: async () => {
        try { await request("DELETE", "/api/session"); } catch (_) { /* expired already */ }
        setApiKey(null);
        await go("/");
      } }, "Sign out");
    slot.replaceChildren(h("a", { href: "/me/keys", id: "account-name" }, me.user), " ", signOut);
  }
}

// A `next` taken from the URL is followed only to a path of this site.
function safeNext(next) {
  return next && next.startsWith("/") && !next.startsWith("//") ? next : "/";
}

export async function loginPage(root) {
  const params = new URLSearchParams(window.location.search);
  const username = h("input", { id: "username", name: "username", autocomplete: "username",
    required: true, maxlength: 64 });
  const password = h("input", { id: "password", name: "password", type: "password",
    autocomplete: "current-password", required: true });
  const status = h("div", { "aria-live": "polite" });
  const form = h("form", { id: "login-form", class: "narrow" },
    h("div", { class: "field" }, h("label", { for: "username" }, "User name"), username),
    h("div", { class: "field" }, h("label", { for: "password" }, "Password"), password),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")), status,
    h("p", { class: "muted small" }, "No account? An administrator creates one with ",
      h("code", {}, "gptstore users add NAME --password-stdin"), "."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const session = await sendJSON("POST", "/api/session",
        { username: username.value, password: password.value });
      setApiKey(session.key);
      await go(safeNext(params.get("next")));
    } catch (err) {
      status.replaceChildren(errorBox(err, "Check the user name and the password."));
    }
  });
  // a user without a password signs in with an API key (`gptstore keys create NAME`)
  const key = h("input", { id: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "gsk_…" });
  const keyStatus = h("div", { "aria-live": "polite" });
  const keyForm = h("form", { id: "key-login-form", class: "narrow" },
    h("div", { class: "field" }, h("label", { for: "api-key" }, "API key"), key,
      h("small", { class: "muted" }, "It stays in this browser.")),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in with the key")),
    keyStatus);
  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    setApiKey(key.value.trim());
    try {
      await request("GET", "/api/me");
      await go(safeNext(params.get("next")));
    } catch (err) {
      setApiKey(null);
      keyStatus.replaceChildren(errorBox(err, "Check the key: it may be mistyped, revoked or expired."));
    }
  });
  const me = await whoami().catch(() => null);
  if (me && me.mode === "local") {
    root.append(h("h1", {}, "Sign in"), h("p", {}, "This store runs in local mode (bound to " +
      "this machine, no users): you are its one user and need no sign-in."));
    return;
  }
  root.append(h("h1", {}, "Sign in"), form, h("h2", {}, "Or with an API key"), keyForm);
}

function keyTable(keys, refresh) {
  if (!keys.length) return h("p", { class: "muted empty" }, "No API keys yet.");
  const rows = keys.map((k) => {
    const cell = h("td", {});
    if (k.state === "active") {
      cell.append(h("button", { type: "button", class: "small secondary", onclick: async () => {
        try {
          await request("DELETE", `/api/keys/${encodeURIComponent(k.id)}`);
          await refresh();
        } catch (err) { cell.replaceChildren(errorBox(err)); }
      } }, "Revoke"));
    }
    return h("tr", { "data-key": k.id }, h("td", {}, k.name), h("td", {}, h("code", {}, k.id)),
      h("td", {}, k.scope), h("td", {}, h("span", { class: `status ${k.state}` }, k.state)),
      h("td", {}, timeAgo(k.created_at)), h("td", {}, k.expires_at ? k.expires_at.slice(0, 10) : "never"),
      h("td", {}, k.last_used_at ? timeAgo(k.last_used_at) : "never"), cell);
  });
  return h("div", { class: "table-wrap" }, h("table", { class: "list", id: "keys" },
    h("thead", {}, h("tr", {}, ["name", "id", "scope", "state", "created", "expires", "last used", ""]
      .map((c) => h("th", {}, c)))),
    h("tbody", {}, rows)));
}

export async function keysPage(root) {
  root.append(h("h1", {}, "API keys"));
  const me = await whoami();
  if (!me || !me.user) {
    root.append(h("p", {}, signInLink(), " to manage your API keys."));
    return;
  }
  if (me.mode === "local") {
    root.append(h("p", {}, "This store runs in local mode: one user, no login and no keys " +
      "(any api_key works in the openai client). Create users with ",
      h("code", {}, "gptstore users add NAME"), " to require keys; then sign in here."));
    return;
  }
  const list = h("div", { id: "key-list" });
  const refresh = async () => {
    const keys = await getJSON("/api/keys");
    list.replaceChildren(keyTable(keys.data, refresh));
  };
  const name = h("input", { id: "key-name", value: "notebook", maxlength: 64, required: true });
  const scope = h("select", { id: "key-scope" },
    ["read", "write", "admin"].map((s) => h("option", { value: s, selected: s === "write" }, s)));
  const days = h("input", { id: "key-days", type: "number", min: 1, max: 3650, placeholder: "never" });
  const shown = h("div", { "aria-live": "polite", id: "new-key-box" });
  const form = h("form", { id: "key-form", class: "inline-form" },
    h("div", { class: "field" }, h("label", { for: "key-name" }, "Name"), name),
    h("div", { class: "field" }, h("label", { for: "key-scope" }, "Scope"), scope),
    h("div", { class: "field" }, h("label", { for: "key-days" }, "Expires in (days)"), days),
    h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const made = await sendJSON("POST", "/api/keys", { name: name.value, scope: scope.value,
        expires_in_days: days.value ? Number(days.value) : null });
      const code = h("code", { id: "new-key" }, made.key);
      shown.replaceChildren(h("div", { class: "notice" },
        h("p", {}, "Your new key, shown this once: copy it now."), code, " ",
        h("button", { type: "button", class: "small", onclick: () => navigator.clipboard
          && navigator.clipboard.writeText(made.key) }, "Copy")));
      await refresh();
    } catch (err) {
      shown.replaceChildren(errorBox(err));
    }
  });
  root.append(h("p", { class: "muted" }, `Signed in as ${me.user}. Keys work with the openai ` +
    "client (api_key=...), curl (Authorization: Bearer ...) and the gptstore CLI."),
  form, shown, list);
  await refresh();
}
