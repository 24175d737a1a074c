// The dashboard's only script: retry/cancel and queue pause/resume through the JSON API (with
// the bearer token the user typed, kept in sessionStorage so it never leaves this tab except in
// that header) and auto-refresh of the queues overview. No cookies, so no cross-site request
// can act for you.
"use strict";

const TOKEN_KEY = "skiplock-api-token";

function flash(text, ok) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = ok ? "ok" : "fail";
  box.hidden = false;
}

async function act(button) {
  const id = button.dataset.job;
  const action = button.dataset.action;
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  button.disabled = true;
  try {
    const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST", headers });
    const body = await resp.json().catch(() => ({}));
    if (resp.ok) {
      flash(`job ${id}: ${action} done, now ${body.state}`, true);
      const row = button.closest("tr[data-job-id]");
      if (row) {
        row.dataset.state = body.state;
        const badge = row.querySelector(".badge");
        if (badge) { badge.textContent = body.state; badge.className = "badge " + body.state; }
        button.remove();
      } else {
        window.location.reload();
      }
    } else {
      const hint = resp.status === 401 ? " (enter the API token at the top right)" : "";
      flash(`job ${id}: ${action} failed: ${body.error || resp.status}${hint}`, false);
      button.disabled = false;
    }
  } catch (err) {
    flash(`job ${id}: ${action} failed: ${err}`, false);
    button.disabled = false;
  }
}

function setupToken() {
  const form = document.getElementById("token-form");
  if (!form) return;
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  state.textContent = sessionStorage.getItem(TOKEN_KEY) ? "saved" : "";
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    state.textContent = "saved";
  });
}

function setupRefresh() {
  const box = document.getElementById("auto-refresh");
  const live = document.getElementById("live");
  if (!box || !live) return;
  setInterval(async () => {
    if (!box.checked || document.hidden) return;
    try {
      const resp = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
      if (!resp.ok) return;
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.getElementById("live");
      if (fresh) live.replaceWith(fresh);
    } catch (err) {
      // Keep showing the last good numbers; the next tick tries again.
    }
  }, 5000);
}

async function retryAll(button) {
  const filters = {};
  for (const key of ["queue", "task", "error"]) {
    if (button.dataset[key]) filters[key] = button.dataset[key];
  }
  const what = Object.entries(filters).map(([k, v]) => `${k}=${v}`).join(", ") || "all queues";
  if (!window.confirm(`Queue again every dead job matching ${what}?`)) return;
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  button.disabled = true;
  const resp = await fetch("/v1/jobs/retry-dead", {
    method: "POST", headers, body: JSON.stringify({ ...filters, limit: 10000 }),
  });
  const body = await resp.json().catch(() => ({}));
  if (resp.ok) {
    flash(`${body.retried} dead job(s) queued again`, true);
  } else {
    const hint = resp.status === 401 ? " (enter the API token at the top right)" : "";
    flash(`retry all failed: ${body.error || resp.status}${hint}`, false);
    button.disabled = false;
  }
}

// The bearer token the user saved, if any, as request headers.
function authHeaders(extra) {
  const headers = { ...(extra || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  return headers;
}

// Show a queue row as paused or not. Queue names and "paused by" are data: set with
// textContent only, never as HTML.
function showPaused(row, state) {
  row.dataset.paused = state.paused ? "true" : "false";
  row.classList.toggle("paused", state.paused);
  const cell = row.querySelector("td");
  for (const old of cell.querySelectorAll("[data-col='paused'], [data-col='paused_by']")) old.remove();
  if (state.paused) {
    const badge = document.createElement("span");
    badge.className = "badge paused";
    badge.dataset.col = "paused";
    badge.textContent = "paused";
    const by = document.createElement("div");
    by.className = "muted paused-by";
    by.dataset.col = "paused_by";
    const since = state.paused_at ? state.paused_at.replace("T", " ").slice(0, 19) : "-";
    by.textContent = `since ${since} UTC by ${state.paused_by || "?"}`;
    cell.append(" ", badge, by);
  }
  const button = row.querySelector("button.queue-act");
  if (button) {
    button.dataset.action = state.paused ? "resume" : "pause";
    button.textContent = state.paused ? "Resume" : "Pause";
  }
}

async function queueAct(button) {
  const queue = button.dataset.queue;
  const action = button.dataset.action;  // "pause" or "resume"
  button.disabled = true;
  try {
    // encodeURIComponent: a slash in a name travels as %2F, which the API route accepts.
    const resp = await fetch(`/v1/queues/${encodeURIComponent(queue)}/${action}`,
                             { method: "POST", headers: authHeaders() });
    const body = await resp.json().catch(() => ({}));
    if (resp.ok) {
      const said = action === "pause"
        ? (body.changed ? "paused: workers stop claiming from it; running jobs finish"
                        : `was already paused (by ${body.paused_by || "?"})`)
        : (body.changed ? "resumed: workers claim from it again" : "was not paused");
      flash(`queue ${queue} ${said}`, true);
      const row = button.closest("tr[data-queue]");
      if (row) showPaused(row, body);
    } else {
      const hint = resp.status === 401 ? " (enter the API token at the top right)" : "";
      flash(`queue ${queue}: ${action} failed: ${body.error || resp.status}${hint}`, false);
    }
  } catch (err) {
    flash(`queue ${queue}: ${action} failed: ${err}`, false);
  }
  button.disabled = false;
}

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.queue-act");
  if (button) queueAct(button);
});

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.act");
  if (button) act(button);
  if (ev.target.closest("#retry-all")) retryAll(ev.target.closest("#retry-all"));
});
setupToken();
setupRefresh();
