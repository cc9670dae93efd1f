/*
 * Screens, the continue button and the space bar. Only one screen is visible at a time;
 * data-phase on #app names what the page is doing (for people and automated tests alike).
 * Words come from the page (templates/run.html), never from here: text(key) reads them.
 */
export const $ = (id) => document.getElementById(id);
export const app = $("app");
const continueButton = $("continue");
let onContinue = null;

export function text(key) {
  const el = document.querySelector('#texts [data-text="' + key + '"]');
  return el ? el.textContent.trim() : "";
}

export function phase(name) { app.dataset.phase = name; }

export function show(id, label, handler) {
  phase(id.replace("screen-", ""));
  for (const screen of document.querySelectorAll(".screen")) screen.hidden = screen.id !== id;
  if (handler) {
    continueButton.textContent = label || text("continue");
    continueButton.disabled = false;
    continueButton.hidden = false;
    onContinue = handler;
  } else {
    continueButton.hidden = true;
    onContinue = null;
  }
  if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
}

export function waitForContinue(id, label, beforeEnable) {
  return new Promise((resolve) => {
    show(id, label, resolve);
    if (beforeEnable) beforeEnable(continueButton);
  });
}

/* A message screen whose title, text and button label are the page's texts named by key. */
export function message(key, labelKey) {
  $("message-title").textContent = text(key + "-title");
  $("message-text").textContent = text(key + "-text");
  return waitForContinue("screen-message", text(labelKey || "continue"));
}

/* A refusal or final state (templates/run.html, #screen-state): no button, a link back where one applies. */
export function showState(name) {
  show("screen-state");
  let found = false;
  for (const el of document.querySelectorAll("#screen-state .state")) {
    el.hidden = el.dataset.state !== name;
    found = found || !el.hidden;
  }
  $("state-link").hidden = !found || $("state-link").querySelector("a").getAttribute("href") === "#";
  app.dataset.state = name;
}

continueButton.addEventListener("click", () => {
  if (continueButton.disabled || continueButton.hidden || !onContinue) return;
  const handler = onContinue;
  onContinue = null;
  continueButton.hidden = true;
  continueButton.blur();
  handler();
});

/* Controls that use the space bar themselves: text fields and the consent checkbox. */
const isTyping = (target) => target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT");

document.addEventListener("keydown", (e) => {
  if (e.code !== "Space" && e.key !== " ") return;
  if (isTyping(e.target)) return;
  e.preventDefault(); // no page scroll, no native button/checkbox activation on keyup
  if (!e.repeat && !continueButton.hidden && !continueButton.disabled) continueButton.click();
});
document.addEventListener("keyup", (e) => {
  if ((e.code === "Space" || e.key === " ") && !isTyping(e.target)) e.preventDefault();
});
