"""A rehearsal of a pilot in real Chromium: a small cohort, then the export, the analysis and the voiding.

One study with the defaults that matter (fullscreen required, the careless-responding
screen-out, the device gate) and a small design; then, each in its own browser tab:

* **careful**: looks at each pair 400 ms, answers the catch trials right: completed, reads the
  debrief (which says the images were changed) and is sent on to ``redirect_url`` with the code;
* **fast**: answers as soon as each pair appears (a few ms) and holds a key down once: screened
  out, no completion code, the held key's repeat ignored and counted;
* **catch**: careful timing but both catch trials wrong: screened out;
* **phone**: a 390x844 touch viewport: never sees the consent form and holds no slot (no record);
* **leaver**: leaves fullscreen while a pair is on screen: the pair goes, a key pressed meanwhile
  is not stored, the button brings them back, the exit is counted in the export;
* **reloader**: reloads in the middle and finishes;
* **two tabs**: opens the study again in a second tab with the same link and finishes in both;
* **preview**: the admin's rehearsal link: runs the study without a list slot or an export row.

Then the export (geometry columns as the browser measured them), ``advbias analyze`` and its
report (who is kept), and ``advbias participants void``: every list is empty again, ready for
real recruitment.

Fullscreen in headless Chromium: ``requestFullscreen`` after a real click is granted and fires
``fullscreenchange`` (the test checks ``document.fullscreenElement`` each time); the window's size
does not change (there is no screen to fill). Leaving by Escape is browser UI that automation
cannot press, so the leaver leaves through ``document.exitFullscreen()``, which fires the same
``fullscreenchange`` event the page listens to.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_browser import CHROMIUM_ARGS, PHASE_LOG, TIMEOUT_MS, Participant, chromium, shots  # noqa: F401 (fixtures)

pytestmark = pytest.mark.browser

CONFIG: dict[str, Any] = dict(trials_per_participant=4, practice_trials=1, catch_trials=2, fixation_ms=200, iti_ms=150,
                              require_prolific_pid=True, redirect_after_s=2)
N_TRIALS = 7
CAREFUL_MS = 400
#: A scripted participant inside the page: F 10 ms after each pair appears, then the key's auto-repeat.
BOT = """
new MutationObserver(() => {
  if (document.getElementById('app').dataset.phase !== 'response') return;
  setTimeout(() => {
    for (const repeat of [false, true]) {
      document.dispatchEvent(new KeyboardEvent('keydown', {key: 'f', code: 'KeyF', repeat: repeat, bubbles: true}));
    }
  }, 10);
}).observe(document.getElementById('app'), {attributes: true, attributeFilter: ['data-phase']});
"""


def url_for(live: Any, slug: str, pid: str, session: str = "s1") -> str:
    return f"{live.url}/run/{slug}?PROLIFIC_PID={pid}&STUDY_ID=pilot&SESSION_ID={session}"


class Truth:
    """Which trial a tab shows, and its truth (from the database, as a person who always sees the catch)."""

    def __init__(self, live: Any, slug: str) -> None:
        self.live, self.slug = live, slug

    def catch_side(self, me: Participant) -> str | None:
        """The correct side if the pair on ``me``'s screen is a catch trial, else None.

        The pair is the participant's first unanswered trial showing this left image (an image may
        come back in a later trial of the same person); a pair already answered in another tab is None."""
        from sqlalchemy import select

        from experiment.delivery import image_url
        from experiment.models import Experiment, Participant as Person, Trial

        src = me.page.get_by_test_id("left").get_attribute("src")
        with self.live.db.session() as s:
            who = Person.preview.is_(True) if me.pid is None else Person.prolific_pid == me.pid
            person, exp = s.execute(select(Person, Experiment).join(Experiment, Experiment.id == Person.experiment_id)
                                    .where(Experiment.slug == self.slug, who)).one()
            for trial in s.scalars(select(Trial).where(Trial.participant_id == person.id,
                                                       Trial.index >= person.next_index).order_by(Trial.index)):
                if src.endswith(image_url(exp, person.public_id, trial.left_stimulus_id)):
                    return trial.target_side if trial.kind == "catch" else None
        return None  # a trial another tab answered meanwhile: the server refuses this answer anyway


def careful(truth: Truth, wrong_catch: bool = False) -> Any:
    """Answers main trials alternately and catch trials right (or, with ``wrong_catch``, wrong)."""
    def choose(me: Participant) -> str:
        side = truth.catch_side(me)
        if side is None:
            return "left" if len(me.answers) % 2 == 0 else "right"
        return ("right" if side == "left" else "left") if wrong_catch else side
    return choose


def lists_held(live: Any, slug: str) -> list[int]:
    from experiment.study import get_experiment, list_counts

    with live.db.session() as s:
        return list_counts(s, get_experiment(s, slug))


def records(live: Any, slug: str) -> dict[str, tuple[str, bool, bool]]:
    """PROLIFIC_PID (or 'preview') -> (status, preview, void) of every stored participant."""
    from sqlalchemy import select

    from experiment.models import Experiment, Participant as Person

    with live.db.session() as s:
        rows = s.execute(select(Person.prolific_pid, Person.status, Person.preview, Person.voided_at)
                         .join(Experiment, Experiment.id == Person.experiment_id).where(Experiment.slug == slug))
        return {(pid or "preview"): (status, preview, voided is not None) for pid, status, preview, voided in rows}


def cli(live: Any, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advbias", *args, "--database-url", live.database_url,
                           "--instance", str(live.server.instance)], capture_output=True, text=True)


def take_part(chromium: Any, shots: Path, name: str, pid: str | None, **context_args: Any) -> Participant:
    """A person in a browser of their own; ``pid`` is their PROLIFIC_PID (kept on the tab as ``pid``)."""
    viewport = context_args.pop("viewport", {"width": 1280, "height": 860})
    ctx = chromium.new_context(viewport=viewport, **context_args)
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.add_init_script(PHASE_LOG)
    me = Participant(ctx.new_page(), shots, name, think_ms=CAREFUL_MS)
    me.pid = pid  # type: ignore[attr-defined]
    return me


def test_a_rehearsed_pilot(live_study: Any, chromium: Any, shots: Path, tmp_path: Path) -> None:  # noqa: F811
    live = live_study
    slug = live.create_experiment(redirect_url=f"{live.url}/?cc={{code}}", **CONFIG)
    truth = Truth(live, slug)
    codes: dict[str, str | None] = {}

    # The phone: turned away before consent, and the server never hears of it.
    phone = take_part(chromium, shots, "phone", 'PHONE', viewport={"width": 390, "height": 844}, is_mobile=True,
                      has_touch=True, device_scale_factor=3)
    phone.open(url_for(live, slug, "PHONE"))
    assert phone.run() == "state:device"
    assert "consent" not in phone.page.evaluate("window.__phases")
    assert phone.page.get_by_test_id("return-link").get_attribute("href").startswith("https://app.prolific.com")
    assert records(live, slug) == {} and sum(lists_held(live, slug)) == 0

    # The careful participant: debrief, code, and on to redirect_url by itself.
    me = take_part(chromium, shots, "careful", 'CAREFUL')
    me.open(url_for(live, slug, "CAREFUL"))
    codes["CAREFUL"] = me.run(side=careful(truth))
    debrief = me.page.get_by_test_id("debrief-text").inner_text()
    assert "changed" in debrief and "computer program" in debrief
    geometry = me.page.evaluate("[innerWidth, innerHeight, screen.width, screen.height, devicePixelRatio,"
                                " parseInt(document.getElementById('img-left').style.width)]")
    me.page.wait_for_url(f"{live.url}/?cc=LIVE-DONE", timeout=TIMEOUT_MS)

    # Too fast: a script in the page presses F 10 ms after each onset, twice (the second as an
    # auto-repeat, which is ignored and counted): what scripted responding looks like to the page.
    fast = take_part(chromium, shots, "fast", "FAST")
    fast.open(url_for(live, slug, "FAST"))
    fast.page.evaluate(BOT)

    def bot_answers(side: str | None = None, wait_for_mask: bool = False) -> str:
        fast.answered += 1  # the script in the page answered this pair
        fast.answers.append("left")
        return "left"

    fast.answer = bot_answers  # type: ignore[method-assign]
    codes["FAST"] = fast.run()
    assert codes["FAST"] == "state:screened_out"
    assert fast.page.get_by_test_id("screenout-code").inner_text() == ""  # no code: return the study

    # Careful timing, both catch trials wrong.
    inattentive = take_part(chromium, shots, "catch", 'CATCH')
    inattentive.open(url_for(live, slug, "CATCH"))
    codes["CATCH"] = inattentive.run(side=careful(truth, wrong_catch=True))
    assert codes["CATCH"] == "state:screened_out"

    # Leaves fullscreen while a pair is on screen: the trial is withdrawn and a key then is not stored.
    leaver = take_part(chromium, shots, "leaver", 'LEAVER')
    leaver.open(url_for(live, slug, "LEAVER"))
    leaver.run(stop_after_answers=3, side=careful(truth))
    leaver.wait_for_response_screen()
    leaver.page.evaluate("document.exitFullscreen()")
    leaver.page.wait_for_function("() => document.getElementById('app').dataset.phase === 'fullscreen'")
    assert leaver.page.evaluate("document.getElementById('pair').classList.contains('off')"
                                " && document.getElementById('screen-trial').hidden")
    leaver.shot("paused")
    leaver.page.keyboard.press("f")  # not stored: no trial is on screen
    # The withdrawn pair counts as shown: the same trial's next response screen is a new one.
    leaver.answered = leaver.page.evaluate("window.__phases.filter((p) => p === 'response').length")
    leaver.enter_fullscreen()
    leaver.wait_for_response_screen()
    leaver.answer("right")  # not the F pressed during the pause
    codes["LEAVER"] = leaver.run(side=careful(truth))

    # Reloads in the middle.
    reloader = take_part(chromium, shots, "reloader", 'RELOAD')
    reloader.open(url_for(live, slug, "RELOAD"))
    reloader.run(stop_after_answers=3, side=careful(truth))
    reloader.reload()
    codes["RELOAD"] = reloader.run(side=careful(truth))

    # The same link in a second tab: both tabs end with the code; one record, one slot.
    tab1 = take_part(chromium, shots, "tab1", 'TABS')
    tab1.open(url_for(live, slug, "TABS"))
    tab1.run(stop_after_answers=2, side=careful(truth))
    tab1.wait_for_response_screen()
    tab2 = Participant(tab1.page.context.new_page(), shots, "tab2", think_ms=CAREFUL_MS)
    tab2.pid = "TABS"  # type: ignore[attr-defined]
    tab2.open(url_for(live, slug, "TABS"))
    tab2.run(stop_after_answers=2, side=careful(truth))
    tab1.page.bring_to_front()
    codes["TABS"] = tab1.run(side=careful(truth))
    tab2.page.bring_to_front()
    assert tab2.run(side=careful(truth)) == codes["TABS"]

    # A rehearsal through the preview link: no PROLIFIC_PID, no list slot, no export row.
    from experiment.rehearsal import preview_path
    from experiment.study import find_experiment

    held_before = lists_held(live, slug)
    rehearsal = take_part(chromium, shots, "preview", None)
    rehearsal.open(live.url + preview_path(find_experiment(live.db, slug)))
    rehearsal.run(side=careful(truth))
    assert rehearsal.page.get_by_test_id("preview-banner").is_visible()
    assert lists_held(live, slug) == held_before

    # Outcomes, and the lists they hold: the completed four (screened-out people free theirs).
    assert codes == {"CAREFUL": "LIVE-DONE", "FAST": "state:screened_out", "CATCH": "state:screened_out",
                     "LEAVER": "LIVE-DONE", "RELOAD": "LIVE-DONE", "TABS": "LIVE-DONE"}
    people = records(live, slug)
    assert people == {"CAREFUL": ("completed", False, False), "FAST": ("screened_out", False, False),
                      "CATCH": ("screened_out", False, False), "LEAVER": ("completed", False, False),
                      "RELOAD": ("completed", False, False), "TABS": ("completed", False, False),
                      "preview": ("completed", True, False)}
    assert sum(lists_held(live, slug)) == 4 and max(lists_held(live, slug)) == 1

    # The export: everyone but the phone and the preview, with the geometry the browser measured.
    rows = live.export(slug, shots / "export.csv")
    by_pid: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_pid.setdefault(r["prolific_pid"], []).append(r)
    assert set(by_pid) == {"CAREFUL", "FAST", "CATCH", "LEAVER", "RELOAD", "TABS"}
    assert all(len(v) == N_TRIALS for v in by_pid.values())
    for r in by_pid["CAREFUL"]:
        measured = [int(r["window_width"]), int(r["window_height"]), int(r["screen_width"]), int(r["screen_height"]),
                    float(r["device_pixel_ratio"]), int(r["image_px"])]
        assert measured == geometry and r["fullscreen"] == "1" and r["fullscreen_mode"] == "required"
        assert float(r["rt_ms"]) >= CAREFUL_MS - 1 and r["fullscreen_exits"] == "0"
    assert all(r["fullscreen"] == "1" for r in rows)  # required: no answer outside fullscreen
    leaver_rows = sorted(by_pid["LEAVER"], key=lambda r: int(r["trial_index"]))
    assert [r["fullscreen_exits"] for r in leaver_rows] == ["0"] * 3 + ["1"] * 4
    assert leaver_rows[3]["response"] == leaver.answers[3]  # the key pressed during the pause was not stored
    fast_rows = sorted(by_pid["FAST"], key=lambda r: int(r["trial_index"]))
    assert all(float(r["rt_ms"]) < 100 for r in fast_rows)  # about 10 ms after each onset
    assert [r["ignored_keys"] for r in fast_rows] == ["1"] * N_TRIALS  # each trial's auto-repeat, ignored

    # The analysis keeps the four who completed and says why the other two are out.
    out = tmp_path / "analysis"
    done = subprocess.run([sys.executable, "-m", "advbias", "analyze", str(shots / "export.csv"), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with (out / "participants.csv").open(newline="", encoding="utf-8") as fh:
        verdict = {r["prolific_pid"]: r for r in csv.DictReader(fh)}
    kept = {pid for pid, r in verdict.items() if r["excluded"] in ("False", "false", "0")}
    assert kept == {"CAREFUL", "LEAVER", "RELOAD", "TABS"}, {p: r["reason"] for p, r in verdict.items()}
    assert "screened_out" in verdict["FAST"]["reason"] and "screened_out" in verdict["CATCH"]["reason"]
    assert (out / "report.html").is_file()

    # Rehearsal over: void the test participants; every list is empty for real recruitment.
    done = cli(live, "participants", "void", slug, *sorted(by_pid), "--reason", "rehearsal before launch")
    assert done.returncode == 0, done.stderr
    assert lists_held(live, slug) == [0] * len(lists_held(live, slug))
    assert live.export(slug, shots / "after-void.csv") == []
    kept_void = tmp_path / "with-void.csv"
    done = cli(live, "export", slug, "--out", str(kept_void), "--include-void")
    assert done.returncode == 0, done.stderr
    with kept_void.open(newline="", encoding="utf-8") as fh:
        assert {r["participant_status"] for r in csv.DictReader(fh)} == {"void"}
