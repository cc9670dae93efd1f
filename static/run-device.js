/*
 * The device and the window: who can take part (checked before consent), how large the pictures
 * are drawn, fullscreen as the study asks for it, and pausing when the window stops fitting.
 *
 * Gate (before consent, before the server knows the participant, so nobody turned away holds a
 * counterbalancing list): a fine pointer (no touch-only phones or tablets), a screen at least
 * min_window_width x min_window_height, fullscreen available where it is required, and a
 * measurable refresh rate of at least min_refresh_hz. A window that is merely too small is asked
 * to grow (the page waits), and during the trials it pauses the study until it fits again.
 */
import { $, app, show, text, waitForContinue } from "./run-screens.js";

const data = app.dataset;
export const CFG = {
  fixationMs: Number(data.fixationMs) || 0,
  itiMs: Number(data.itiMs) || 0,
  breakEvery: Number(data.breakEvery) || 0,
  minWidth: Number(data.minWidth) || 0,
  minHeight: Number(data.minHeight) || 0,
  fullscreen: data.fullscreen || "required",
  minRefreshHz: Number(data.minRefreshHz) || 0,
  redirectAfterS: Number(data.redirectAfterS) || 0,
  progress: data.progress === "1",
  imagePx: Number(data.imagePx) || 224,
};

export const bigEnough = () => window.innerWidth >= CFG.minWidth && window.innerHeight >= CFG.minHeight;
const fullscreenRequired = () => CFG.fullscreen === "required";
const inFullscreen = () => !!document.fullscreenElement;

/* Median frame interval over `frames` animation frames, as a rate; null if frames do not come. */
export function measureRefresh(frames) {
  return new Promise((resolve) => {
    const stamps = [];
    let finished = false;
    const timer = setTimeout(() => { finished = true; resolve(null); }, 4000);
    function step(t) {
      if (finished) return;
      stamps.push(t);
      if (stamps.length <= frames) { requestAnimationFrame(step); return; }
      finished = true;
      clearTimeout(timer);
      const d = [];
      for (let i = 1; i < stamps.length; i++) d.push(stamps[i] - stamps[i - 1]);
      d.sort((a, b) => a - b);
      const median = d[Math.floor(d.length / 2)];
      resolve(median > 0 ? Math.min(1000, Math.max(1, 1000 / median)) : null);
    }
    requestAnimationFrame(step);
  });
}

const untilVisible = () => new Promise((resolve) => {
  if (document.visibilityState === "visible") { resolve(); return; }
  document.addEventListener("visibilitychange", function once() {
    if (document.visibilityState !== "visible") return;
    document.removeEventListener("visibilitychange", once);
    resolve();
  });
});

const untilFits = () => new Promise((resolve) => {
  if (bigEnough()) { resolve(); return; }
  window.addEventListener("resize", function once() {
    if (!bigEnough()) return;
    window.removeEventListener("resize", once);
    resolve();
  });
});

export let refreshHz = null;

/* null if this device may take part, else the name of the state that explains why not. */
export async function gate() {
  show("screen-gate");
  const finePointer = window.matchMedia("(any-pointer: fine)").matches;
  if (!finePointer || screen.width < CFG.minWidth || screen.height < CFG.minHeight) return "device";
  if (fullscreenRequired() && !document.fullscreenEnabled) return "nofullscreen";
  for (let tries = 0; tries < 3 && !refreshHz; tries++) {
    await untilVisible(); // a tab in the background draws no frames
    refreshHz = await measureRefresh(60);
  }
  if (!refreshHz || refreshHz < CFG.minRefreshHz) return "display";
  $("gate-size").hidden = bigEnough();
  await untilFits();
  return null;
}

/* Integer scaling of the set's own image size keeps the perturbation's pixels intact (no resampling). */
export function displaySize() {
  const px = CFG.imagePx;
  const scale = Math.floor(Math.min((window.innerWidth - 120) / 2, window.innerHeight * 0.62) / px);
  return px * Math.max(1, Math.min(scale, 3));
}

// ------------------------------------------------------------------ fullscreen

export const fullscreen = { exits: 0, armed: false, save: null };

document.addEventListener("fullscreenchange", () => {
  if (!inFullscreen() && fullscreen.armed) {
    fullscreen.exits += 1;
    if (fullscreen.save) fullscreen.save(fullscreen.exits);
  }
  if (inFullscreen()) fullscreen.armed = true;
});

function request() {
  const root = document.documentElement;
  if (root.requestFullscreen) root.requestFullscreen().catch(() => {});
}

/* Resolves once in fullscreen (or, where it is only recommended, when the participant goes on without). */
export function enterFullscreen(returning) {
  if (CFG.fullscreen === "off" || inFullscreen()) return Promise.resolve();
  if (!fullscreenRequired() && returning) return Promise.resolve();
  const title = $("fullscreen-title");
  const words = $("fullscreen-text");
  title.textContent = returning ? title.dataset.return : title.dataset.enter;
  words.textContent = returning ? words.dataset.return : (fullscreenRequired() ? words.dataset.required : words.dataset.recommended);
  return new Promise((resolve) => {
    const entered = () => {
      if (!inFullscreen()) return;
      document.removeEventListener("fullscreenchange", entered);
      resolve();
    };
    document.addEventListener("fullscreenchange", entered);
    $("fullscreen").onclick = request;
    if (fullscreenRequired()) show("screen-fullscreen");
    else waitForContinue("screen-fullscreen", text("without-fullscreen")).then(() => {
      document.removeEventListener("fullscreenchange", entered);
      resolve();
    });
  });
}

// ------------------------------------------------------------------ pausing

/* Why the trials cannot run right now: "fullscreen", "small" or null. */
export function pauseReason() {
  if (fullscreenRequired() && !inFullscreen()) return "fullscreen";
  if (!bigEnough()) return "small";
  return null;
}

/* Shows the pause screens until the trials can run (fullscreen where required, a window that fits). */
export async function whenRunnable() {
  for (let reason = pauseReason(); reason; reason = pauseReason()) {
    if (reason === "fullscreen") await enterFullscreen(true);
    else {
      show("screen-pause");
      await untilFits();
    }
  }
}

/* Calls `stop` as soon as the trials must pause; returns the function that stops listening. */
export function onInterruption(stop) {
  const check = () => { if (pauseReason()) stop(); };
  document.addEventListener("fullscreenchange", check);
  window.addEventListener("resize", check);
  return () => {
    document.removeEventListener("fullscreenchange", check);
    window.removeEventListener("resize", check);
  };
}

/* What the browser measures at an answer (docs/export.md). */
export function geometry(size) {
  return {
    window_width: Math.round(window.innerWidth),
    window_height: Math.round(window.innerHeight),
    screen_width: Math.round(screen.width),
    screen_height: Math.round(screen.height),
    device_pixel_ratio: window.devicePixelRatio || 1,
    image_px: size,
    fullscreen_exits: fullscreen.exits,
  };
}
