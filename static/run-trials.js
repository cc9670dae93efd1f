/*
 * The trial sequence: preloading, one trial locked to animation frames, saving, breaks, progress.
 *
 * Timing: fixation, stimulus onset and offset are locked to requestAnimationFrame; the onset is
 * the timestamp of the frame in which the pair was drawn, and the response time is measured from
 * it with the event's own timestamp (same clock, performance.now()).
 *
 * Careless and scripted responding: F/J pressed before the pair appears (during the fixation or
 * the inter-trial interval) and auto-repeated keys are ignored, and counted (ignored_keys).
 *
 * Pauses: when the window leaves fullscreen (where it is required) or becomes too small, the pair
 * on screen is withdrawn at once, nothing is stored, and the same trial starts afresh (fixation
 * included) when the participant is back (run-device.js).
 *
 * Saving: each answer is POSTed as soon as it is given, with an idempotency key kept in
 * localStorage until the server confirms, so a retry (after a network failure or a reload) can
 * never store it twice. The next trial starts only after the confirmation; none is skipped.
 */
import { api, ApiError } from "./run-api.js";
import { $, message, phase, show } from "./run-screens.js";
import { CFG, displaySize, geometry, onInterruption, whenRunnable } from "./run-device.js";

const PRELOAD_AHEAD = 6;
let trialHandler = null; // set while a pair is on screen and waiting for F/J or a click
let ignoredKeys = 0;
const duringTrials = () => ["fixation", "response", "saving"].includes($("app").dataset.phase);

document.addEventListener("keydown", (e) => {
  const key = (e.key || "").toLowerCase();
  const side = key === "f" || e.code === "KeyF" ? "left" : key === "j" || e.code === "KeyJ" ? "right" : null;
  if (!side || !duringTrials()) return;
  if (e.repeat || !trialHandler) { ignoredKeys += 1; return; }
  trialHandler(side, "key", e.timeStamp);
});

const nextFrame = () => new Promise((resolve) => requestAnimationFrame(resolve));

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => ("0" + b.toString(16)).slice(-2)).join("");
}

// ------------------------------------------------------------------ preloading

const imageCache = {};

function loadImage(url) {
  if (!imageCache[url]) {
    imageCache[url] = new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => (img.decode ? img.decode() : Promise.resolve()).then(() => resolve(img), () => resolve(img));
      img.onerror = () => { delete imageCache[url]; reject(new Error("cannot load " + url)); };
      img.src = url;
    });
    imageCache[url].catch(() => {});
  }
  return imageCache[url];
}

/* Resolves when the images of trials[i .. i+need) are decoded; shows progress while it waits and a
   retry button if an image cannot be loaded. Later trials keep loading in the background. */
async function ensureLoaded(trials, i, need) {
  for (let k = i; k < Math.min(trials.length, i + PRELOAD_AHEAD); k++) {
    loadImage(trials[k].left);
    loadImage(trials[k].right);
  }
  const urls = [];
  for (let j = i; j < Math.min(trials.length, i + need); j++) urls.push(trials[j].left, trials[j].right);
  for (;;) {
    let loaded = 0;
    const timer = setTimeout(() => { show("screen-preload"); $("preload-error").hidden = true; }, 150);
    try {
      await Promise.all(urls.map((u) => loadImage(u).then(() => {
        loaded += 1;
        $("preload-progress").value = loaded / urls.length;
      })));
      clearTimeout(timer);
      return;
    } catch (err) {
      clearTimeout(timer);
      show("screen-preload");
      $("preload-error").hidden = false;
      await new Promise((resolve) => { $("retry").onclick = resolve; });
      $("preload-error").hidden = true;
      $("preload-progress").value = 0;
    }
  }
}

// ------------------------------------------------------------------ one trial

function drawMask(canvas, size) {
  canvas.width = size;
  canvas.height = size;
  canvas.style.width = size + "px";
  canvas.style.height = size + "px";
  const ctx = canvas.getContext("2d");
  const cell = Math.max(4, Math.round(size / 28));
  for (let y = 0; y < size; y += cell) {
    for (let x = 0; x < size; x += cell) {
      const v = Math.floor(Math.random() * 256);
      ctx.fillStyle = "rgb(" + v + "," + v + "," + v + ")";
      ctx.fillRect(x, y, cell, cell);
    }
  }
}

/* Waits about `ms`, in whole frames; resolves early (false) if `stopped()` becomes true. */
async function waitMs(ms, stopped) {
  const t0 = await nextFrame();
  let frame = 1000 / 60;
  let last = t0;
  for (;;) {
    const t = await nextFrame();
    if (stopped && stopped()) return false;
    frame = Math.min(frame, Math.max(1, t - last));
    last = t;
    if (t - t0 >= ms - frame / 2) return true;
  }
}

function hidePair() {
  $("pair").classList.add("off");
  $("question").classList.add("off");
  $("mask-left").hidden = true;
  $("mask-right").hidden = true;
}

function setProgress(trial, nPractice, nTrials) {
  const box = $("progress");
  box.hidden = !CFG.progress || trial.practice;
  if (box.hidden) return;
  const total = nTrials - nPractice;
  const done = trial.index - nPractice;
  $("progress-bar").value = total > 0 ? done / total : 0;
  $("progress-text").textContent = $("progress-text").dataset.template
    .replace("{done}", String(done)).replace("{total}", String(total));
}

/* Shows one trial; resolves with the answer, or null if the study had to pause meanwhile. */
async function present(trial) {
  const left = $("img-left");
  const right = $("img-right");
  const size = displaySize();
  let blurEvents = 0;
  let interrupted = false;
  let abort = null;
  const onBlur = () => { blurEvents += 1; };
  const onVisibility = () => { if (document.visibilityState === "hidden") blurEvents += 1; };
  window.addEventListener("blur", onBlur);
  document.addEventListener("visibilitychange", onVisibility);
  const stopListening = onInterruption(() => {
    interrupted = true;
    trialHandler = null;
    hidePair();
    if (abort) abort();
  });
  const cleanup = () => {
    stopListening();
    window.removeEventListener("blur", onBlur);
    document.removeEventListener("visibilitychange", onVisibility);
    trialHandler = null;
    left.onclick = right.onclick = $("mask-left").onclick = $("mask-right").onclick = null;
  };

  for (const img of [left, right]) {
    img.style.width = size + "px";
    img.style.height = size + "px";
  }
  hidePair();
  $("fixation").classList.remove("off");
  $("practice-label").hidden = !trial.practice;
  show("screen-trial");
  left.src = trial.left;
  right.src = trial.right;
  const decoded = Promise.all([left.decode(), right.decode()]).catch(() => {});
  phase("fixation");
  if (CFG.fixationMs > 0) await waitMs(CFG.fixationMs, () => interrupted);
  await decoded;
  if (interrupted) { cleanup(); return null; }

  const result = await new Promise((resolve) => {
    let onset = null;
    let offset = null;
    let answered = false;
    abort = () => { answered = true; resolve(null); };
    $("question").textContent = trial.question;
    requestAnimationFrame((t) => {
      if (answered) return;
      $("fixation").classList.add("off");
      $("pair").classList.remove("off");
      $("question").classList.remove("off");
      onset = t;
      trialHandler = respond;
      phase("response");
      if (!trial.presentation_ms) return;
      let frame = 1000 / 60;
      let last = t;
      const tick = (now) => {
        if (answered) return;
        frame = Math.min(frame, Math.max(1, now - last));
        last = now;
        if (now - onset >= trial.presentation_ms - frame / 2) {
          drawMask($("mask-left"), size);
          drawMask($("mask-right"), size);
          $("mask-left").hidden = false;
          $("mask-right").hidden = false;
          offset = now;
        } else {
          requestAnimationFrame(tick);
        }
      };
      requestAnimationFrame(tick);
    });
    function respond(side, source, when) {
      if (answered || onset === null) return;
      answered = true;
      trialHandler = null;
      const stamp = typeof when === "number" && when > 0 ? when : performance.now();
      resolve({
        response: side, response_source: source, rt_ms: Math.max(0, stamp - onset),
        onset_frame_ms: onset, offset_frame_ms: offset, fullscreen: !!document.fullscreenElement,
      });
    }
    left.onclick = (e) => respond("left", "click", e.timeStamp);
    right.onclick = (e) => respond("right", "click", e.timeStamp);
    $("mask-left").onclick = left.onclick;
    $("mask-right").onclick = right.onclick;
  });
  cleanup();
  hidePair();
  if (result === null) return null;
  phase("saving");
  return Object.assign(result, { blurred: blurEvents > 0, blur_events: blurEvents }, geometry(size));
}

// ------------------------------------------------------------------ saving

/* Resolves true once stored, false on a 409 (the trial was answered elsewhere, e.g. in a second
   tab): then the server's state decides what comes next. Other errors are thrown. */
async function save(ctx, pending) {
  let stored = true;
  try {
    await api("POST", "/participants/" + encodeURIComponent(ctx.token) + "/responses", pending);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 409) throw e;
    stored = false;
  }
  ctx.storage("pending", null);
  return stored;
}

/* An answer given before a reload and not yet confirmed is sent before anything else. */
export async function flushPending(ctx) {
  const pending = ctx.storage("pending");
  if (pending && pending.token === ctx.token) {
    delete pending.token;
    await save(ctx, pending);
    await ctx.refresh();
  } else if (pending) {
    ctx.storage("pending", null);
  }
}

// ------------------------------------------------------------------ the sequence

async function fetchTrials(ctx, from) {
  let all = [];
  let start = from;
  for (;;) {
    const page = await api("GET", "/participants/" + encodeURIComponent(ctx.token) + "/trials?start=" + start + "&count=200");
    all = all.concat(page.trials);
    if (page.trials.length < 200) return all;
    start += page.trials.length;
  }
}

async function between(trial, i, nPractice) {
  if (trial.practice) return;
  const mainDone = trial.index - nPractice;
  if (mainDone === 0 && nPractice > 0 && i > 0) await message("main", "start");
  else if (CFG.breakEvery > 0 && mainDone > 0 && mainDone % CFG.breakEvery === 0) await message("break");
}

/* Runs every trial from the server's next_index; ctx = {token, state, storage, refresh}. */
export async function runTrials(ctx) {
  const trials = await fetchTrials(ctx, ctx.state.next_index);
  const nPractice = ctx.state.n_practice;
  if (ctx.state.next_index > 0) await message("welcome");
  else if (nPractice > 0) await message("practice", "start-practice");
  await ensureLoaded(trials, 0, Math.min(trials.length, PRELOAD_AHEAD));
  for (let i = 0; i < trials.length; i++) {
    const trial = trials[i];
    await between(trial, i, nPractice);
    await ensureLoaded(trials, i, 1);
    let result = null;
    while (result === null) {
      await whenRunnable();
      setProgress(trial, nPractice, ctx.state.n_trials);
      result = await present(trial);
    }
    const pending = Object.assign({ trial_id: trial.id, idempotency_key: randomKey(), ignored_keys: ignoredKeys }, result);
    ignoredKeys = 0;
    ctx.storage("pending", Object.assign({ token: ctx.token }, pending));
    const outcome = await Promise.all([save(ctx, pending), CFG.itiMs > 0 ? waitMs(CFG.itiMs) : Promise.resolve()]);
    if (!outcome[0]) break;
  }
  await ctx.refresh();
  if (ctx.state.next_index < ctx.state.n_trials) return runTrials(ctx); // another tab answered some
  return null;
}
