/*
 * advbias participant runner (plain JavaScript, no build step, no inline script).
 *
 * Screens: consent -> instructions -> browser check -> practice -> trials (with breaks)
 * -> debrief -> completion. The server holds the truth: on every load the page asks it
 * where this participant stands and continues there, so a reload resumes.
 *
 * Timing: fixation, stimulus onset and offset are locked to requestAnimationFrame; the
 * onset is the timestamp of the frame in which the pair was drawn, and the response time
 * is measured from it with the event's own timestamp (same clock, performance.now()).
 *
 * Saving: each answer is POSTed as soon as it is given, with an idempotency key that is
 * kept in localStorage until the server confirms, so a retry (after a network failure or
 * a reload) can never store it twice. The next trial starts only after the confirmation;
 * a trial is never skipped. The completion code appears only after every answer is stored.
 */
(function () {
  "use strict";

  var app = document.getElementById("app");
  var SLUG = app.dataset.slug;
  var CFG = {
    fixationMs: Number(app.dataset.fixationMs) || 0,
    itiMs: Number(app.dataset.itiMs) || 0,
    breakEvery: Number(app.dataset.breakEvery) || 0,
    minWidth: Number(app.dataset.minWidth) || 0,
    minHeight: Number(app.dataset.minHeight) || 0,
  };
  var API = "/api/v1";
  var STORE = "advbias:" + SLUG;
  var PRELOAD_AHEAD = 6;
  var IMAGE_PX = 224;

  var $ = function (id) { return document.getElementById(id); };
  var continueButton = $("continue");
  var waiting = $("waiting");
  var state = null;
  var token = null;
  var onContinue = null;
  var trialHandler = null; // set while a pair is on screen and waiting for F/J or a click

  // ------------------------------------------------------------------ small utilities

  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }
  function nextFrame() { return new Promise(function (r) { requestAnimationFrame(r); }); }

  function randomKey() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function storage(key, value) {
    try {
      if (value === undefined) return JSON.parse(localStorage.getItem(STORE + ":" + key) || "null");
      if (value === null) localStorage.removeItem(STORE + ":" + key);
      else localStorage.setItem(STORE + ":" + key, JSON.stringify(value));
    } catch (e) { /* private mode: resume by PROLIFIC_PID still works */ }
    return null;
  }

  // ------------------------------------------------------------------ screens and the continue button

  /* data-phase on #app names what the page is doing (for people and automated tests alike). */
  function phase(name) { app.dataset.phase = name; }

  function show(id, label, handler) {
    phase(id.replace("screen-", ""));
    var screens = document.querySelectorAll(".screen");
    for (var i = 0; i < screens.length; i++) screens[i].hidden = screens[i].id !== id;
    if (handler) {
      continueButton.textContent = label || "Continue";
      continueButton.disabled = false;
      continueButton.hidden = false;
      onContinue = handler;
    } else {
      continueButton.hidden = true;
      onContinue = null;
    }
    if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
  }

  function waitForContinue(id, label, beforeEnable) {
    return new Promise(function (resolve) {
      show(id, label, resolve);
      if (beforeEnable) beforeEnable(continueButton);
    });
  }

  continueButton.addEventListener("click", function () {
    if (continueButton.disabled || continueButton.hidden || !onContinue) return;
    var handler = onContinue;
    onContinue = null;
    continueButton.hidden = true;
    continueButton.blur();
    handler();
  });

  /* Controls that use the space bar themselves: text fields, and the consent checkbox (so that
     a participant who uses only the keyboard can tick it). */
  function isTyping(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT");
  }

  document.addEventListener("keydown", function (e) {
    if (e.code === "Space" || e.key === " ") {
      if (isTyping(e.target)) return;
      e.preventDefault(); // no page scroll, no native button/checkbox activation on keyup
      if (!e.repeat && !continueButton.hidden && !continueButton.disabled) continueButton.click();
      return;
    }
    if (trialHandler && !e.repeat) {
      var key = (e.key || "").toLowerCase();
      if (key === "f" || e.code === "KeyF") trialHandler("left", "key", e.timeStamp);
      else if (key === "j" || e.code === "KeyJ") trialHandler("right", "key", e.timeStamp);
    }
  });
  document.addEventListener("keyup", function (e) {
    if ((e.code === "Space" || e.key === " ") && !isTyping(e.target)) e.preventDefault();
  });

  function message(title, text, label) {
    $("message-title").textContent = title;
    $("message-text").textContent = text;
    return waitForContinue("screen-message", label || "Continue");
  }

  function fatal(text) {
    show("screen-error");
    $("error-text").textContent = text;
  }

  // ------------------------------------------------------------------ the API, with retries

  function ApiError(status, data) {
    this.status = status;
    this.data = data || {};
    this.message = (data && data.error) || ("error " + status);
  }

  /* Network failures, 5xx, 408 and 429 are retried with backoff (the page says it is waiting), or
     after the server's retry_after_ms when it names one (a burst of starts: experiment/admission.py);
     other 4xx answers are final and thrown as ApiError. */
  async function api(method, path, body) {
    var delay = 500;
    for (;;) {
      var res = null;
      var data = null;
      try {
        res = await fetch(API + path, {
          method: method,
          headers: body === undefined ? {} : { "Content-Type": "application/json" },
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
          credentials: "same-origin",
        });
        data = await res.json();
      } catch (err) {
        res = null;
      }
      if (res && res.status < 500 && res.status !== 408 && res.status !== 429) {
        waiting.hidden = true;
        if (!res.ok) throw new ApiError(res.status, data);
        return data;
      }
      waiting.hidden = false;
      if (res && data && typeof data.retry_after_ms === "number") {
        // The server is starting many participants and gave this one its moment to come back.
        await sleep(Math.min(Math.max(data.retry_after_ms, 50), 10000));
        continue;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 8000);
    }
  }

  async function refreshState() {
    state = await api("GET", "/participants/" + encodeURIComponent(token));
    return state;
  }

  // ------------------------------------------------------------------ start or resume

  async function start() {
    var params = new URLSearchParams(location.search);
    var pid = params.get("PROLIFIC_PID");
    if (pid) {
      /* The server resumes a PROLIFIC_PID only with the same SESSION_ID or this browser's own token. */
      state = await api("POST", "/experiments/" + encodeURIComponent(SLUG) + "/participants", {
        prolific_pid: pid,
        study_id: params.get("STUDY_ID") || null,
        session_id: params.get("SESSION_ID") || null,
        token: storage("token") || null,
      });
    } else {
      var saved = storage("token");
      if (saved) {
        try {
          token = saved;
          await refreshState();
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 404) throw e;
          state = null;
          storage("pending", null);
        }
      }
      if (!state) state = await api("POST", "/experiments/" + encodeURIComponent(SLUG) + "/participants", {});
    }
    token = state.token;
    storage("token", token);
    await flushPending();
    await route();
  }

  async function route() {
    if (state.status !== "in_progress") return done();
    if (!state.consented) await consent();
    if (!state.browser_checked) {
      await waitForContinue("screen-instructions", "Continue");
      await browserCheck();
    }
    if (state.next_index < state.n_trials) await runTrials();
    return debrief();
  }

  async function consent() {
    var box = $("consent-box");
    box.checked = false;
    await waitForContinue("screen-consent", "I agree, continue", function (button) {
      button.disabled = true;
      box.onchange = function () {
        button.disabled = !box.checked;
        box.blur();
      };
    });
    state = await api("POST", "/participants/" + encodeURIComponent(token) + "/consent", { consent: true });
  }

  // ------------------------------------------------------------------ browser check

  function measureRefresh(frames) {
    return new Promise(function (resolve) {
      var stamps = [];
      var finished = false;
      var timer = setTimeout(function () { finished = true; resolve(null); }, 4000);
      function step(t) {
        if (finished) return;
        stamps.push(t);
        if (stamps.length > frames) {
          finished = true;
          clearTimeout(timer);
          var d = [];
          for (var i = 1; i < stamps.length; i++) d.push(stamps[i] - stamps[i - 1]);
          d.sort(function (a, b) { return a - b; });
          var median = d[Math.floor(d.length / 2)];
          resolve(median > 0 ? Math.min(1000, Math.max(1, 1000 / median)) : null);
        } else {
          requestAnimationFrame(step);
        }
      }
      requestAnimationFrame(step);
    });
  }

  function bigEnough() { return window.innerWidth >= CFG.minWidth && window.innerHeight >= CFG.minHeight; }

  async function browserCheck() {
    show("screen-check");
    $("fullscreen").onclick = function () {
      if (document.documentElement.requestFullscreen) document.documentElement.requestFullscreen().catch(function () {});
    };
    var hz = await measureRefresh(60);
    $("check-status").textContent = hz
      ? "Your display refreshes about " + Math.round(hz) + " times per second."
      : "Your display could not be measured; that is fine.";
    await new Promise(function (resolve) {
      show("screen-check", "Continue", resolve);
      var update = function () {
        $("check-size").hidden = bigEnough();
        continueButton.disabled = !bigEnough();
      };
      update();
      window.addEventListener("resize", update);
    });
    storage("refresh_hz", hz);
    state = await api("POST", "/participants/" + encodeURIComponent(token) + "/browser-check", {
      window_width: window.innerWidth,
      window_height: window.innerHeight,
      screen_width: screen.width,
      screen_height: screen.height,
      device_pixel_ratio: window.devicePixelRatio || 1,
      refresh_hz: hz,
      image_px: displaySize(),
      user_agent: navigator.userAgent.slice(0, 512),
      fullscreen: !!document.fullscreenElement,
    });
  }

  /* Integer scaling keeps the perturbation's pixels intact (no resampling blur). */
  function displaySize() {
    var scale = Math.floor(Math.min((window.innerWidth - 120) / 2, window.innerHeight * 0.62) / IMAGE_PX);
    return IMAGE_PX * Math.max(1, Math.min(scale, 3));
  }

  // ------------------------------------------------------------------ preloading

  var imageCache = {};

  function loadImage(url) {
    if (!imageCache[url]) {
      imageCache[url] = new Promise(function (resolve, reject) {
        var img = new Image();
        img.onload = function () {
          (img.decode ? img.decode() : Promise.resolve()).then(function () { resolve(img); }, function () { resolve(img); });
        };
        img.onerror = function () {
          delete imageCache[url];
          reject(new Error("cannot load " + url));
        };
        img.src = url;
      });
      imageCache[url].catch(function () {});
    }
    return imageCache[url];
  }

  /* Resolves when the images of trials[i .. i+need) are decoded; shows progress while it waits
     and a retry button if an image cannot be loaded. Later trials keep loading in the background. */
  async function ensureLoaded(trials, i, need) {
    for (var k = i; k < Math.min(trials.length, i + PRELOAD_AHEAD); k++) {
      loadImage(trials[k].left);
      loadImage(trials[k].right);
    }
    var urls = [];
    for (var j = i; j < Math.min(trials.length, i + need); j++) urls.push(trials[j].left, trials[j].right);
    for (;;) {
      var loaded = 0;
      var shown = false;
      var timer = setTimeout(function () { shown = true; show("screen-preload"); $("preload-error").hidden = true; }, 150);
      try {
        await Promise.all(urls.map(function (u) {
          return loadImage(u).then(function () {
            loaded += 1;
            $("preload-progress").value = loaded / urls.length;
          });
        }));
        clearTimeout(timer);
        return;
      } catch (err) {
        clearTimeout(timer);
        show("screen-preload");
        $("preload-error").hidden = false;
        await new Promise(function (resolve) { $("retry").onclick = resolve; });
        $("preload-error").hidden = true;
      }
      if (shown) $("preload-progress").value = 0;
    }
  }

  // ------------------------------------------------------------------ one trial

  function drawMask(canvas, size) {
    canvas.width = size;
    canvas.height = size;
    canvas.style.width = size + "px";
    canvas.style.height = size + "px";
    var ctx = canvas.getContext("2d");
    var cell = Math.max(4, Math.round(size / 28));
    for (var y = 0; y < size; y += cell) {
      for (var x = 0; x < size; x += cell) {
        var v = Math.floor(Math.random() * 256);
        ctx.fillStyle = "rgb(" + v + "," + v + "," + v + ")";
        ctx.fillRect(x, y, cell, cell);
      }
    }
  }

  async function waitMs(ms) {
    var t0 = await nextFrame();
    var frame = 1000 / 60;
    var last = t0;
    for (;;) {
      var t = await nextFrame();
      frame = Math.min(frame, Math.max(1, t - last));
      last = t;
      if (t - t0 >= ms - frame / 2) return t;
    }
  }

  async function present(trial) {
    var left = $("img-left");
    var right = $("img-right");
    var pair = $("pair");
    var question = $("question");
    var fixation = $("fixation");
    var size = displaySize();
    var blurEvents = 0;
    var onBlur = function () { blurEvents += 1; };
    var onVisibility = function () { if (document.visibilityState === "hidden") blurEvents += 1; };
    window.addEventListener("blur", onBlur);
    document.addEventListener("visibilitychange", onVisibility);

    [left, right].forEach(function (img) {
      img.style.width = size + "px";
      img.style.height = size + "px";
    });
    $("mask-left").hidden = true;
    $("mask-right").hidden = true;
    pair.classList.add("off");
    question.classList.add("off");
    fixation.classList.remove("off");
    $("practice-label").hidden = !trial.practice;
    show("screen-trial");

    left.src = trial.left;
    right.src = trial.right;
    var decoded = Promise.all([left.decode(), right.decode()]).catch(function () {});
    phase("fixation");
    if (CFG.fixationMs > 0) await waitMs(CFG.fixationMs);
    await decoded;

    var result = await new Promise(function (resolve) {
      var onset = null;
      var offset = null;
      var answered = false;
      question.textContent = trial.question;
      requestAnimationFrame(function (t) {
        fixation.classList.add("off");
        pair.classList.remove("off");
        question.classList.remove("off");
        onset = t;
        trialHandler = respond;
        phase("response");
        if (trial.presentation_ms) {
          var frame = 1000 / 60;
          var last = t;
          var tick = function (now) {
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
        }
      });
      function respond(side, source, when) {
        if (answered || onset === null) return;
        answered = true;
        trialHandler = null;
        left.onclick = null;
        right.onclick = null;
        var stamp = typeof when === "number" && when > 0 ? when : performance.now();
        resolve({
          response: side,
          response_source: source,
          rt_ms: Math.max(0, stamp - onset),
          onset_frame_ms: onset,
          offset_frame_ms: offset,
          fullscreen: !!document.fullscreenElement,
        });
      }
      left.onclick = function (e) { respond("left", "click", e.timeStamp); };
      right.onclick = function (e) { respond("right", "click", e.timeStamp); };
      $("mask-left").onclick = left.onclick;
      $("mask-right").onclick = right.onclick;
    });

    window.removeEventListener("blur", onBlur);
    document.removeEventListener("visibilitychange", onVisibility);
    pair.classList.add("off");
    question.classList.add("off");
    $("mask-left").hidden = true;
    $("mask-right").hidden = true;
    phase("saving");
    result.blurred = blurEvents > 0;
    result.blur_events = blurEvents;
    return result;
  }

  // ------------------------------------------------------------------ saving

  /* Resolves true once stored, false on a 409 (the trial was answered elsewhere, e.g. in a
     second tab): then the server's state decides what comes next. Other errors are thrown. */
  async function save(pending) {
    var stored = true;
    try {
      await api("POST", "/participants/" + encodeURIComponent(token) + "/responses", pending);
    } catch (e) {
      if (!(e instanceof ApiError) || e.status !== 409) throw e;
      stored = false;
    }
    storage("pending", null);
    return stored;
  }

  async function flushPending() {
    var pending = storage("pending");
    if (pending && pending.token === token) {
      delete pending.token;
      await save(pending);
      await refreshState();
    } else if (pending) {
      storage("pending", null);
    }
  }

  // ------------------------------------------------------------------ the trial sequence

  async function fetchTrials(from) {
    var all = [];
    var start = from;
    for (;;) {
      var page = await api("GET", "/participants/" + encodeURIComponent(token) + "/trials?start=" + start + "&count=200");
      all = all.concat(page.trials);
      if (page.trials.length < 200) return all;
      start += page.trials.length;
    }
  }

  async function runTrials() {
    var trials = await fetchTrials(state.next_index);
    var nPractice = state.n_practice;
    if (state.next_index > 0) {
      await message("Welcome back", "You continue where you stopped. Your earlier answers are saved.");
    } else if (nPractice > 0) {
      await message("Practice", "First a few practice trials to get used to the task.", "Start the practice");
    }
    await ensureLoaded(trials, 0, Math.min(trials.length, PRELOAD_AHEAD));
    for (var i = 0; i < trials.length; i++) {
      var trial = trials[i];
      if (!trial.practice) {
        var mainDone = trial.index - nPractice;
        if (mainDone === 0 && nPractice > 0 && i > 0) {
          await message("The practice is over", "The main part starts now. It works exactly like the practice.", "Start");
        } else if (CFG.breakEvery > 0 && mainDone > 0 && mainDone % CFG.breakEvery === 0) {
          await message("Short break", "Take a short rest. Continue when you are ready.");
        }
      }
      await ensureLoaded(trials, i, 1);
      var result = await present(trial);
      var pending = Object.assign({ trial_id: trial.id, idempotency_key: randomKey() }, result);
      storage("pending", Object.assign({ token: token }, pending));
      var outcome = await Promise.all([save(pending), CFG.itiMs > 0 ? waitMs(CFG.itiMs) : Promise.resolve()]);
      if (!outcome[0]) break;
    }
    await refreshState();
    if (state.next_index < state.n_trials) return runTrials(); // another tab answered some: continue from the server's view
    return null;
  }

  // ------------------------------------------------------------------ the end

  async function debrief() {
    $("debrief-text").value = "";
    await waitForContinue("screen-debrief", "Finish");
    state = await api("POST", "/participants/" + encodeURIComponent(token) + "/finish", {
      text: $("debrief-text").value.slice(0, 5000),
    });
    return done();
  }

  function done() {
    show("screen-done");
    $("completion-code").textContent = state.completion_code || "";
    if (state.status === "screened_out") {
      $("done-title").textContent = "Thank you for taking part";
      $("done-text").textContent = "All your answers are saved. Please return this study with the code:";
    }
    if (state.redirect_url) {
      $("prolific-link").href = state.redirect_url;
      $("done-link").hidden = false;
    }
    storage("pending", null);
  }

  $("error-retry").onclick = function () { location.reload(); };

  start().catch(function (err) {
    fatal(err && err.message ? err.message : "The study could not be loaded. Please reload the page.");
  });
})();
