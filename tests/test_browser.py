"""Participants in a real Chromium against a real gunicorn server, on SQLite and PostgreSQL.

Each test creates a small experiment (6 trials: 1 practice, 4 main, 1 catch), takes part
through the page exactly as a person would (keyboard or mouse), and then checks the export:
every answered trial is there exactly once, with the answer that was given. Variants: a
reload in the middle, the network cut while an answer is being saved (before it reaches the
server, and after the server stored it but before the reply arrived), a second tab with the
same PROLIFIC_PID, and a timed presentation whose recorded onset and offset frames must give
the asked duration within one frame period.

Screenshots of every screen go to ``test-artifacts/browser/<test>/``.
"""
from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
#: Small and quick, but with every kind of screen: practice, a break, catch, debrief.
#: One catch failure is allowed: these tests are about saving, not attention (tests/test_rehearsal.py is).
CONFIG: dict[str, Any] = dict(trials_per_participant=4, practice_trials=1, catch_trials=1, fixation_ms=150, iti_ms=100,
                              break_every=2, max_catch_failures=1)
#: How long a participant of these tests looks at a pair before answering (the page's own clock):
#: above the screen-out's median of 250 ms, as a person's answer would be.
THINK_MS = 300
N_TRIALS = 6
TIMEOUT_MS = 20_000
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LiveStudy = Any  # the conftest's live_study fixture

#: Installed before the page's own script: records every change of #app's data-phase, so that a
#: test can tell the fifth "response" screen from the fourth even when they follow quickly.
PHASE_LOG = """
window.__phases = [];
window.__responseAt = 0;
new MutationObserver(function (records) {
  records.forEach(function (r) {
    var phase = r.target.getAttribute('data-phase');
    window.__phases.push(phase);
    if (phase === 'response') window.__responseAt = performance.now();
  });
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-phase']});
"""

#: What the page waits for next: an unanswered pair, a continue button that can be pressed,
#: the consent box, or the end. Returns a label or false (keep polling).
NEXT_STEP = """
([answered]) => {
  const app = document.getElementById('app');
  if (!app || !window.__phases) return false;
  const phase = app.dataset.phase;
  const shown = window.__phases.filter((p) => p === 'response').length;
  const button = document.querySelector('[data-testid=continue]');
  const ready = button && !button.hidden;
  if (phase === 'response' && shown > answered) return 'response';
  if (phase === 'done' || phase === 'error' || phase === 'state') return phase;
  if (phase === 'fullscreen' && !document.fullscreenElement) return 'fullscreen';
  if (phase === 'consent' && ready && button.disabled) return 'consent';
  if (ready && !button.disabled) return 'continue:' + phase;
  return false;
}
"""


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    folder = ARTIFACTS / "browser" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def context(chromium: Any) -> Iterator[Any]:
    ctx = chromium.new_context(viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(PHASE_LOG)
    uncaught: list[str] = []
    ctx.on("weberror", lambda error: uncaught.append(str(error.error)))
    try:
        yield ctx
    finally:
        ctx.close()
    assert uncaught == [], f"uncaught errors in the page: {uncaught}"


class Participant:
    """One browser tab taking part; remembers every answer it gave, in order."""

    def __init__(self, page: Any, shots: Path, name: str, keyboard: bool = True, think_ms: float = THINK_MS) -> None:
        self.page = page
        self.shots = shots
        self.name = name
        self.keyboard = keyboard
        self.think_ms = think_ms
        self.answered = 0  # "response" screens handled since this tab's page was (re)loaded
        self.answers: list[str] = []
        self.console_errors: list[str] = []
        self._n = 0
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))

    def shot(self, label: str) -> None:
        self._n += 1
        self.page.screenshot(path=str(self.shots / f"{self.name}-{self._n:02d}-{label}.png"))

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.answered = 0

    def reload(self) -> None:
        self.page.reload()
        self.answered = 0  # the phase log starts afresh with the new document

    def phase(self) -> str:
        return self.page.evaluate("document.getElementById('app').dataset.phase")

    def next_step(self, timeout: int = TIMEOUT_MS) -> str:
        handle = self.page.wait_for_function(NEXT_STEP, arg=[self.answered], timeout=timeout)
        return handle.json_value()

    def press_continue(self, label: str) -> None:
        self.shot(label)
        if self.keyboard:
            self.page.keyboard.press("Space")
        else:
            self.page.get_by_test_id("continue").click()

    def consent(self) -> None:
        self.shot("consent")
        box = self.page.get_by_test_id("consent")
        if self.keyboard:
            box.focus()
            self.page.keyboard.press("Space")
        else:
            box.click()
        assert box.is_checked()

    def answer(self, side: str | None = None, wait_for_mask: bool = False) -> str:
        """Answer the pair on screen (F/J or a click); alternates sides unless told."""
        side = side or ("left" if len(self.answers) % 2 == 0 else "right")
        if wait_for_mask:
            self.page.wait_for_function("() => !document.getElementById('mask-left').hidden")
        if self.think_ms > 0:  # looks at the pair first, timed on the page's own clock
            self.page.wait_for_function("(ms) => performance.now() - window.__responseAt >= ms", arg=self.think_ms)
        self.shot(f"answer-{len(self.answers)}{'-mask' if wait_for_mask else ''}")
        if self.keyboard:
            self.page.keyboard.press("f" if side == "left" else "j")
        elif wait_for_mask:
            self.page.locator(f"#mask-{side}").click()
        else:
            self.page.get_by_test_id(side).click()
        self.answered += 1
        self.answers.append(side)
        return side

    def enter_fullscreen(self) -> None:
        """Press the page's fullscreen button (a real click: requestFullscreen needs a user gesture)."""
        self.shot("fullscreen")
        self.page.get_by_test_id("fullscreen").click()
        self.page.wait_for_function("() => !!document.fullscreenElement")

    def state(self) -> str:
        """The refusal or final state the page shows (templates/run.html, #screen-state)."""
        return self.page.evaluate("document.getElementById('app').dataset.state || ''")

    def run(self, *, stop_after_answers: int | None = None, wait_for_mask: bool = False,
            side: Any = None) -> str | None:
        """Take part until the end (the completion code; ``state:NAME`` for a final state) or until
        ``stop_after_answers`` answers. ``side(page)`` may choose each answer (default: alternate)."""
        while True:
            if stop_after_answers is not None and len(self.answers) >= stop_after_answers:
                return None
            step = self.next_step()
            if step == "response":
                self.answer(side(self) if side else None, wait_for_mask=wait_for_mask)
            elif step == "consent":
                self.consent()
            elif step == "fullscreen":
                self.enter_fullscreen()
            elif step.startswith("continue:"):
                self.press_continue(step.split(":", 1)[1])
            elif step == "done":
                self.shot("done")
                return self.page.get_by_test_id("completion-code").inner_text()
            elif step == "state":
                self.shot("state")
                return f"state:{self.state()}"
            else:
                self.shot("error")
                pytest.fail("the page shows its error screen")

    def wait_for_response_screen(self) -> None:
        """Go through screens until the next pair is on screen, without answering it."""
        while True:
            step = self.next_step()
            if step == "response":
                return
            if step == "consent":
                self.consent()
            elif step == "fullscreen":
                self.enter_fullscreen()
            elif step.startswith("continue:"):
                self.press_continue(step.split(":", 1)[1])
            else:
                pytest.fail(f"expected a trial, the page is at {step}")


def run_url(live: LiveStudy, slug: str, pid: str) -> str:
    return f"{live.url}/run/{slug}?PROLIFIC_PID={pid}&STUDY_ID=browser&SESSION_ID=s1"


def check_export(live: LiveStudy, slug: str, shots: Path, expected: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every answered trial exactly once, with the answer given, for each PROLIFIC_PID in ``expected``."""
    rows = live.export(slug, shots / "export.csv")
    per_trial = Counter((r["prolific_pid"], int(r["trial_index"])) for r in rows)
    assert all(n == 1 for n in per_trial.values()), per_trial
    for pid, answers in expected.items():
        mine = sorted((r for r in rows if r["prolific_pid"] == pid), key=lambda r: int(r["trial_index"]))
        assert [int(r["trial_index"]) for r in mine] == list(range(len(answers)))
        assert [r["response"] for r in mine] == answers
        assert {r["participant"] for r in mine} and len({r["participant"] for r in mine}) == 1
    assert {r["prolific_pid"] for r in rows} == set(expected)
    return rows


def stored_count(live: LiveStudy, slug: str) -> tuple[int, int]:
    """(participants, answers) of an experiment, straight from the database."""
    from sqlalchemy import func, select

    from experiment.models import Experiment, Participant, Response

    with live.db.session() as s:
        exp_id = s.scalar(select(Experiment.id).where(Experiment.slug == slug))
        people = s.scalar(select(func.count()).select_from(Participant).where(Participant.experiment_id == exp_id))
        answers = s.scalar(
            select(func.count()).select_from(Response).join(Participant, Participant.id == Response.participant_id)
            .where(Participant.experiment_id == exp_id)
        )
    return people, answers


# --------------------------------------------------------------------------- the plain flows

@pytest.mark.parametrize("keyboard", [True, False], ids=["keyboard", "mouse"])
def test_participant_takes_the_whole_study(live_study: LiveStudy, context: Any, shots: Path, keyboard: bool) -> None:
    slug = live_study.create_experiment(**CONFIG)
    me = Participant(context.new_page(), shots, "p", keyboard=keyboard)
    me.open(run_url(live_study, slug, "PID-A"))
    code = me.run()
    assert code == "LIVE-DONE"
    assert me.page.get_by_test_id("prolific-link").get_attribute("href").endswith("cc=LIVE-DONE")
    rows = check_export(live_study, slug, shots, {"PID-A": me.answers})
    assert {r["response_source"] for r in rows} == {"key" if keyboard else "click"}
    assert {r["participant_status"] for r in rows} == {"completed"}
    assert [r["kind"] for r in rows][0] == "practice" and Counter(r["kind"] for r in rows)["main"] == 4
    for r in rows:
        assert float(r["rt_ms"]) > 0 and float(r["onset_frame_ms"]) > 0 and r["offset_frame_ms"] == ""
        assert 20 <= float(r["refresh_hz"]) <= 240
    assert me.console_errors == []


# --------------------------------------------------------------------------- interruptions

def test_reload_resumes_at_the_next_unanswered_trial(live_study: LiveStudy, context: Any, shots: Path) -> None:
    slug = live_study.create_experiment(**CONFIG)
    me = Participant(context.new_page(), shots, "p")
    me.open(run_url(live_study, slug, "PID-R"))
    me.run(stop_after_answers=3)
    me.wait_for_response_screen()  # trial 3 is on screen, not answered
    expected_left = me.page.get_by_test_id("left").get_attribute("src")
    me.shot("before-reload")
    me.reload()
    assert me.next_step() == "fullscreen"  # a reloaded page is not in fullscreen: the trials wait for it
    me.enter_fullscreen()
    assert me.next_step() == "continue:message"
    assert me.page.locator("#message-title").inner_text() == "Welcome back"
    me.wait_for_response_screen()  # the same trial 3, not answered before the reload
    assert me.page.get_by_test_id("left").get_attribute("src") == expected_left

    # Reload while an answer is being saved: the request is held, so the server never got it.
    me.page.route("**/responses", lambda route: None)  # held: never sent, never answered
    me.answer("right")
    me.page.wait_for_function("() => document.getElementById('app').dataset.phase === 'saving'")
    me.shot("saving-held")
    assert stored_count(live_study, slug) == (1, 3)
    me.page.unroute("**/responses")
    me.reload()  # the unsent answer is still in localStorage and is sent before anything else
    code = me.run()
    assert code == "LIVE-DONE"
    check_export(live_study, slug, shots, {"PID-R": me.answers})
    assert me.answers[3] == "right"


def test_network_cut_before_the_answer_reaches_the_server(live_study: LiveStudy, context: Any, shots: Path) -> None:
    slug = live_study.create_experiment(**CONFIG)
    me = Participant(context.new_page(), shots, "p")
    me.open(run_url(live_study, slug, "PID-N"))
    me.run(stop_after_answers=2)
    me.wait_for_response_screen()
    context.set_offline(True)
    me.answer("left")
    waiting = me.page.get_by_test_id("waiting")
    waiting.wait_for(state="visible")
    me.page.wait_for_timeout(1600)  # at least two failed attempts (backoff 0.5 s, 1 s)
    me.shot("offline-waiting")
    assert me.phase() == "saving" and stored_count(live_study, slug) == (1, 2)
    context.set_offline(False)
    waiting.wait_for(state="hidden")
    code = me.run()
    assert code == "LIVE-DONE"
    check_export(live_study, slug, shots, {"PID-N": me.answers})


def test_reply_lost_after_the_server_stored_the_answer(live_study: LiveStudy, context: Any, shots: Path) -> None:
    """The worst case for duplicates: stored, but the browser never hears so and sends it again."""
    slug = live_study.create_experiment(**CONFIG)
    me = Participant(context.new_page(), shots, "p")
    me.open(run_url(live_study, slug, "PID-L"))
    me.run(stop_after_answers=2)
    me.wait_for_response_screen()
    attempts: list[dict[str, Any]] = []

    def deliver_then_cut(route: Any) -> None:
        if not attempts:
            reply = route.fetch()  # the request reaches the server, which stores the answer
            attempts.append({"status": reply.status, "body": route.request.post_data_json})
            route.abort("connectionreset")  # ... but the browser only sees a broken connection
        else:
            attempts.append({"status": None, "body": route.request.post_data_json})
            route.continue_()

    replays: list[str] = []
    me.page.on("response", lambda r: r.url.endswith("/responses") and replays.append(
        r.headers.get("idempotent-replayed", "")))
    me.page.route("**/responses", deliver_then_cut)
    me.answer("right")
    me.page.get_by_test_id("waiting").wait_for(state="visible")
    me.shot("reply-lost-waiting")
    me.page.wait_for_function("() => document.getElementById('app').dataset.phase !== 'saving'")
    me.page.unroute("**/responses")
    assert attempts[0]["status"] == 200 and len(attempts) >= 2
    assert attempts[1]["body"]["idempotency_key"] == attempts[0]["body"]["idempotency_key"]
    assert replays[:1] == ["true"]  # the retry was answered from the stored answer
    code = me.run()
    assert code == "LIVE-DONE"
    check_export(live_study, slug, shots, {"PID-L": me.answers})


def test_second_tab_with_the_same_prolific_pid(live_study: LiveStudy, context: Any, shots: Path) -> None:
    slug = live_study.create_experiment(**CONFIG)
    first = Participant(context.new_page(), shots, "tab1")
    first.open(run_url(live_study, slug, "PID-T"))
    first.run(stop_after_answers=2)
    first.wait_for_response_screen()  # tab 1 shows trial 2 and waits

    second = Participant(context.new_page(), shots, "tab2")
    second.open(run_url(live_study, slug, "PID-T"))
    second.run(stop_after_answers=2)  # "Welcome back", then trials 2 and 3
    second.wait_for_response_screen()  # tab 2 shows trial 4
    assert stored_count(live_study, slug) == (1, 4)

    first.page.bring_to_front()
    first.answer("left")  # trial 2 again: refused (answered in tab 2), tab 1 continues from the server's view
    code_first = first.run()
    assert stored_count(live_study, slug) == (1, N_TRIALS)

    second.page.bring_to_front()
    second.answer("left")  # trial 4 was answered in tab 1 meanwhile: refused, then the end
    code_second = second.run()
    assert code_first == code_second == "LIVE-DONE"
    # What was stored: tab 1's trials 0-1, tab 2's trials 2-3, tab 1's trials 4-5.
    stored = first.answers[:2] + second.answers[:2] + first.answers[3:]
    assert len(stored) == N_TRIALS
    check_export(live_study, slug, shots, {"PID-T": stored})
    assert stored_count(live_study, slug) == (1, N_TRIALS)


# --------------------------------------------------------------------------- timing

def test_timed_presentation_lasts_the_asked_duration(live_study: LiveStudy, context: Any, shots: Path) -> None:
    duration = 200
    slug = live_study.create_experiment(**{**CONFIG, "presentation": duration, "break_every": 0})
    me = Participant(context.new_page(), shots, "p")
    me.open(run_url(live_study, slug, "PID-D"))
    code = me.run(wait_for_mask=True)
    assert code == "LIVE-DONE"
    rows = check_export(live_study, slug, shots, {"PID-D": me.answers})
    for r in rows:
        frame = 1000 / float(r["refresh_hz"])
        shown = float(r["offset_frame_ms"]) - float(r["onset_frame_ms"])
        assert float(r["presentation_ms"]) == duration
        # Within one frame period; Chromium reports frame times to 0.1 ms, hence the 0.2 ms of rounding.
        assert abs(shown - duration) <= frame + 0.2, (r["trial_index"], shown, frame)
        assert float(r["rt_ms"]) >= shown  # answered after the mask, as the test did
