// The dashboard's only script: sign-in, retry/cancel, bulk actions and queue pause/resume
// through the JSON API, and auto-refresh of the queues overview. The token the user types is
// sent once, in a JSON body, to /ui/session, which answers with an HttpOnly SameSite=Strict
// cookie: the token is never in a URL and this script never holds it afterwards. Every POST
// carries the X-Skiplock-Request header (or a JSON body), which no other site's form can send.
"use strict";

function flash(text, ok) {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = ok ? "ok" : "fail";
  box.hidden = false;
}

async function act(button) {
  const id = button.dataset.job;
  const action = button.dataset.action;
  button.disabled = true;
  try {
    const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}/${action}`,
                             { method: "POST", headers: authHeaders() });
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
      const hint = needsToken(resp) ? " (enter the API token at the top right)" : "";
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
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value;
    input.value = "";
    try {
      const resp = await fetch("/ui/session", {
        method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify({ token }),
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        state.textContent = "not saved";
        flash(`sign-in failed: ${body.error || resp.status}`, false);
        return;
      }
      document.body.dataset.scope = body.scope;
      state.textContent = "saved";
      // The sign-in page has nothing else on it: show the page that was asked for.
      if (document.body.dataset.signin === "needed") window.location.reload();
    } catch (err) {
      flash(`sign-in failed: ${err}`, false);
    }
  });
  const out = document.getElementById("sign-out");
  if (out) {
    out.addEventListener("click", async () => {
      await fetch("/ui/session", { method: "DELETE", headers: authHeaders() }).catch(() => null);
      window.location.reload();
    });
  }
}

function needsToken(resp) {
  return resp.status === 401 || resp.status === 403;
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

// Headers for a change: the session cookie goes by itself; X-Skiplock-Request is what tells
// the API that this page, not another site's form, sent it (see access.py).
function authHeaders(extra) {
  return { ...(extra || {}), "X-Skiplock-Request": "1" };
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
    // in UTC, as the server renders it (the API's time may carry another offset)
    const since = state.paused_at
      ? new Date(state.paused_at).toISOString().replace("T", " ").slice(0, 19) : "-";
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
      const hint = needsToken(resp) ? " (enter the API token at the top right)" : "";
      flash(`queue ${queue}: ${action} failed: ${body.error || resp.status}${hint}`, false);
    }
  } catch (err) {
    flash(`queue ${queue}: ${action} failed: ${err}`, false);
  }
  button.disabled = false;
}

// Bulk actions over every job the jobs page's filters match (the filter comes from the page,
// as the server parsed it): count, confirm in the page's own dialog, then batch by batch
// through POST /v1/jobs/bulk, following the cursor, with progress. Every string shown is set
// as text, never as HTML.
const BULK = {
  cancel: { verb: "Cancel", did: "cancelled or asked to stop", skip: "already finished or asked to stop" },
  retry: { verb: "Retry", did: "queued again", skip: "not dead or cancelled" },
  delete: { verb: "Delete", did: "deleted", skip: "running: cancel those first" },
};
const BULK_BATCH = 500;
let bulkRun = null;  // {action, filter, count, shown, running, stop, finished}

function bulkEl(name) { return document.getElementById(`bulk-${name}`); }

function filterQuery(filter) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(filter)) {
    for (const v of Array.isArray(value) ? value : [value]) query.append(key, String(v));
  }
  return query.toString();
}

function describeFilter(filter) {
  return Object.entries(filter)
    .map(([key, value]) => value === true ? key
      : `${key} = ${Array.isArray(value) ? value.join(" or ") : value}`)
    .join(", ");
}

function apiError(what, resp, body) {
  const hint = needsToken(resp) ? " (enter the API token at the top right)" : "";
  return `${what} failed: ${body.error || resp.status}${hint}`;
}

async function bulkAsk(button) {
  const action = button.dataset.bulk;
  const filter = JSON.parse(document.getElementById("bulk").dataset.filter);
  const words = BULK[action];
  button.disabled = true;
  try {
    const resp = await fetch(`/v1/jobs/count?${filterQuery(filter)}`);
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      flash(apiError("counting the matching jobs", resp, body), false);
      return;
    }
    const shown = (body.capped ? "at least " : "") + body.count.toLocaleString("en-US");
    bulkRun = { action, filter, count: body.count, shown, running: false, stop: false, finished: false };
    bulkEl("question").textContent = body.count
      ? `${words.verb} ${shown} job(s) matching these filters?`
      : "No job matches these filters any more: nothing to do.";
    bulkEl("filter").textContent = describeFilter(filter);
    bulkEl("status").textContent = "";
    bulkEl("status").className = "";
    bulkEl("progress").hidden = true;
    const go = bulkEl("go");
    go.textContent = `${words.verb} ${shown} job(s)`;
    go.hidden = !body.count;
    go.disabled = false;
    go.dataset.action = action;
    bulkEl("dismiss").textContent = body.count ? `Don't ${action}` : "Close";
    bulkEl("dialog").showModal();
  } catch (err) {
    flash(`counting the matching jobs failed: ${err}`, false);
  } finally {
    button.disabled = false;
  }
}

async function bulkGo() {
  const run = bulkRun;
  if (!run || run.running || run.finished) return;
  const words = BULK[run.action];
  const status = bulkEl("status");
  const progress = bulkEl("progress");
  run.running = true;
  bulkEl("go").disabled = true;
  bulkEl("dismiss").textContent = "Stop after this batch";
  progress.max = Math.max(run.count, 1);
  progress.value = 0;
  progress.hidden = false;
  let cursor = null;
  let done = 0;
  let skipped = 0;
  let failure = null;
  for (;;) {
    const payload = { action: run.action, filter: run.filter, limit: BULK_BATCH };
    if (cursor !== null) payload.cursor = cursor;
    let resp;
    let body;
    try {
      resp = await fetch("/v1/jobs/bulk", {
        method: "POST", headers: authHeaders({ "Content-Type": "application/json" }),
        body: JSON.stringify(payload),
      });
      body = await resp.json().catch(() => ({}));
    } catch (err) {
      failure = `${run.action} failed: ${err}`;
      break;
    }
    if (!resp.ok) {
      failure = apiError(run.action, resp, body);
      break;
    }
    done += body.done;
    skipped += body.skipped;
    cursor = body.cursor;
    // The count was taken before: jobs may have changed since, so the bar never overflows.
    progress.max = Math.max(progress.max, done + skipped);
    progress.value = done + skipped;
    status.textContent = `${(done + skipped).toLocaleString("en-US")} of ${run.shown}: ` +
      `${done.toLocaleString("en-US")} ${words.did}, ${skipped.toLocaleString("en-US")} skipped`;
    if (!body.more || run.stop) break;
  }
  run.running = false;
  run.finished = true;
  let result = `${done.toLocaleString("en-US")} job(s) ${words.did}`;
  if (skipped) result += `; ${skipped.toLocaleString("en-US")} skipped (${words.skip}, or busy at that instant)`;
  if (failure) result = `${failure}. So far: ${result}`;
  else if (run.stop) result = `Stopped. ${result}`;
  else result = `Done: ${result}`;
  status.textContent = result;
  status.className = failure ? "fail" : "ok";
  bulkEl("go").hidden = true;
  bulkEl("dismiss").textContent = "Close";
  flash(result, !failure);
}

function bulkDismiss() {
  const run = bulkRun;
  if (run && run.running) {
    run.stop = true;  // the batch under way finishes; no other starts
    bulkEl("dismiss").textContent = "Stopping…";
    return;
  }
  bulkEl("dialog").close();
  // After a run the list is stale: show the jobs as they are now.
  if (run && run.finished) window.location.reload();
  bulkRun = null;
}

function setupBulk() {
  const dialog = bulkEl("dialog");
  if (!dialog) return;
  bulkEl("go").addEventListener("click", bulkGo);
  bulkEl("dismiss").addEventListener("click", bulkDismiss);
  // Escape: the same as the dismiss button (and it never closes the dialog mid-run).
  dialog.addEventListener("cancel", (ev) => { ev.preventDefault(); bulkDismiss(); });
}

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.bulk-act");
  if (button) bulkAsk(button);
});

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.queue-act");
  if (button) queueAct(button);
});

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button.act");
  if (button) act(button);
});
setupToken();
setupRefresh();
setupBulk();
