/*
 * advbias participant runner: ES modules, no build step, no inline script (the CSP stays strict).
 *
 *   run.js          the flow: device gate -> start or resume -> consent -> instructions -> browser
 *                   check -> fullscreen -> practice and trials -> debrief question -> debrief, code
 *                   and redirect; every refusal and final state as a friendly page
 *   run-api.js      the JSON API with retries; errors that are final
 *   run-screens.js  screens, the continue button, the page's texts
 *   run-device.js   the gate, image size, fullscreen, pausing, the geometry of each answer
 *   run-trials.js   preloading, one trial, saving, the sequence
 *
 * The server holds the truth: on every load the page asks it where this participant stands and
 * continues there, so a reload resumes. Every word shown comes from templates/run.html; the API's
 * own messages are for developers and never reach the page.
 */
import { api, ApiError, makeStorage, UnreadableReply } from "./run-api.js";
import { $, app, show, showState, text, waitForContinue } from "./run-screens.js";
import { CFG, displaySize, enterFullscreen, fullscreen, gate, refreshHz } from "./run-device.js";
import { flushPending, runTrials } from "./run-trials.js";

const SLUG = app.dataset.slug;
const params = new URLSearchParams(location.search);
const previewKey = params.get("preview");
/* A rehearsal keeps its own storage, so it never resumes (or spoils) a real participation. */
const storage = makeStorage("advbias:" + SLUG + (previewKey ? ":preview" : ""));
const ctx = { token: null, state: null, storage: storage, refresh: refresh };
/* Refusals of the start call that are final: the state (templates/run.html) that explains each. */
const START_REFUSALS = { closed: "closed", no_pid: "no_pid", duplicate: "duplicate", bad_preview: "bad_preview" };

async function refresh() {
  ctx.state = await api("GET", "/participants/" + encodeURIComponent(ctx.token));
  return ctx.state;
}

function refusal(err) {
  if (!(err instanceof ApiError)) return null;
  if (err.status === 400) return "bad_link"; // a PROLIFIC_PID or session id that cannot be one
  if (err.status === 404) return "unknown";
  return START_REFUSALS[err.reason] || null;
}

async function begin() {
  const path = "/experiments/" + encodeURIComponent(SLUG) + "/participants";
  const pid = params.get("PROLIFIC_PID");
  const saved = storage("token");
  if (pid || previewKey) {
    /* The server resumes a PROLIFIC_PID only with the same SESSION_ID or this browser's own token. */
    return api("POST", path, {
      prolific_pid: pid || null, study_id: params.get("STUDY_ID") || null,
      session_id: params.get("SESSION_ID") || null, token: saved || null, preview: previewKey || null,
    });
  }
  if (saved) {
    try {
      ctx.token = saved;
      return await refresh();
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 404) throw e;
      storage("pending", null);
    }
  }
  return api("POST", path, {});
}

async function start() {
  if (previewKey) $("preview-banner").hidden = false;
  const turnedAway = await gate();
  if (turnedAway) return showState(turnedAway);
  try {
    ctx.state = await begin();
  } catch (err) {
    if (refusal(err)) return showState(refusal(err));
    throw err;
  }
  ctx.token = ctx.state.token;
  storage("token", ctx.token);
  fullscreen.exits = storage("fullscreen_exits:" + ctx.token) || 0;
  fullscreen.save = (n) => storage("fullscreen_exits:" + ctx.token, n);
  await flushPending(ctx);
  return route();
}

async function route() {
  if (ctx.state.status !== "in_progress") return finished(true);
  if (!ctx.state.consented) await consent();
  if (!ctx.state.browser_checked) {
    await waitForContinue("screen-instructions", text("continue"));
    await browserCheck();
  }
  if (ctx.state.next_index < ctx.state.n_trials) {
    await enterFullscreen(false);
    await runTrials(ctx);
  }
  fullscreen.armed = false; // leaving fullscreen after the last trial is no exit
  if (document.fullscreenElement && document.exitFullscreen) document.exitFullscreen().catch(() => {});
  $("debrief-text").value = "";
  await waitForContinue("screen-debrief", text("finish"));
  ctx.state = await api("POST", "/participants/" + encodeURIComponent(ctx.token) + "/finish", {
    text: $("debrief-text").value.slice(0, 5000),
  });
  return finished(false);
}

async function consent() {
  const box = $("consent-box");
  box.checked = false;
  await waitForContinue("screen-consent", text("agree"), (button) => {
    button.disabled = true;
    box.onchange = () => { button.disabled = !box.checked; box.blur(); };
  });
  ctx.state = await api("POST", "/participants/" + encodeURIComponent(ctx.token) + "/consent", { consent: true });
}

async function browserCheck() {
  ctx.state = await api("POST", "/participants/" + encodeURIComponent(ctx.token) + "/browser-check", {
    window_width: window.innerWidth, window_height: window.innerHeight,
    screen_width: screen.width, screen_height: screen.height,
    device_pixel_ratio: window.devicePixelRatio || 1, refresh_hz: refreshHz, image_px: displaySize(),
    user_agent: navigator.userAgent.slice(0, 512), fullscreen: !!document.fullscreenElement,
  });
}

function debrief(id, paragraphs) {
  const box = $(id);
  box.replaceChildren(...(paragraphs || []).map((words) => {
    const p = document.createElement("p");
    p.textContent = words;
    return p;
  }));
}

/* The end: debrief and code (then back to Prolific), or the screened-out state. */
function finished(again) {
  storage("pending", null);
  const state = ctx.state;
  debrief(state.status === "screened_out" ? "debrief-screened" : "debrief-done", state.debrief_paragraphs);
  if (state.status === "screened_out") {
    showState("screened_out");
    $("screened-code").hidden = !state.completion_code;
    $("screened-return").hidden = !!state.completion_code;
    $("screenout-code").textContent = state.completion_code || "";
  } else {
    show("screen-done");
    if (again) $("done-title").textContent = $("done-title").dataset.again;
    $("done-code").hidden = !state.completion_code;
    $("done-anonymous").hidden = !!state.completion_code;
    $("completion-code").textContent = state.completion_code || "";
  }
  if (state.redirect_url) redirect(state.redirect_url);
}

function redirect(url) {
  $("prolific-link").href = url;
  const note = $("done-redirect");
  if (CFG.redirectAfterS <= 0 || app.dataset.phase !== "done") { note.hidden = true; return; }
  let left = CFG.redirectAfterS;
  const tick = () => {
    note.textContent = note.dataset.template.replace("{seconds}", String(left));
    if (left <= 0) { location.assign(url); return; }
    left -= 1;
    setTimeout(tick, 1000);
  };
  tick();
}

$("error-retry").onclick = () => location.reload();

start().catch((err) => {
  if (err instanceof UnreadableReply) showState("unsaved");
  else show("screen-error");
  console.warn("advbias:", err && err.message); // for developers only; the page shows no API message
});
