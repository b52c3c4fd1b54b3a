"""``dladiff protect``: protect photos and albums from the command line.

Exit codes (also in the README and ``--help``):

- 0: every photo is protected (now or by an earlier run at the same settings);
- 1: some photos failed (each is named with its reason);
- 2: nothing was done: usage error, no photo in the inputs, the output folder holds another job
  or is in use by another running process (its PID is named), is a file or is the photos' own
  folder, a ``--pipeline`` folder that is visibly broken;
- 3: the run finished without failures but some photos are NOT protected: no shield could change
  them (no face found for the zero-shot shield). They are listed; no ``-protected`` file exists
  for them (``--export-unprotected`` writes them as ``-unprotected``);
- 130 (Ctrl-C) or 143 (SIGTERM): stopped on request after the current step; the finished photos
  have their manifest and report, and ``--resume OUT`` finishes the job (a second signal stops
  at once, still resumable).

Heavy libraries load inside :func:`run` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from dladiff_app.core.errors import (
    DladiffError,
    JobConflictError,
    NothingToProtectError,
    UnusableOutputError,
)
from dladiff_app.core.events import (
    Event,
    JobFinished,
    JobStarted,
    Notice,
    PhotoDone,
    PhotoFailed,
    PhotoSkipped,
    PhotoStarted,
    PhotoUnprotected,
    Progress,
)
from dladiff_app.core.jobs import AlbumMode, ExportOptions, OutputFormat, ProtectJob
from dladiff_app.core.manifest import json_safe
from dladiff_app.core.names import json_text, readable
from dladiff_app.core.presets import PRESETS, Layers, ProtectionSettings, preset
from dladiff_app.core.results import IdentityScore, PhotoResult
from dladiff_app.core.score_words import UNSEEN_MODELS_NOTE, still_recognising
from dladiff_app.core.services import JobSummary
from dladiff_app.core.verdict import report_for, verdicts
from dladiff_app.core.visibility_words import change_level, seen_level

HOURS_WARNING_S = 3600.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNPROTECTED = 0, 1, 2, 3
EXIT_CODES_HELP = ("exit codes: 0 every photo protected; 1 some photos failed; 2 nothing done "
                   "(usage error, no photos, folder in use or holding another job); 3 finished, "
                   "but some photos are NOT protected (no face found); 130/143 stopped by Ctrl-C/"
                   "SIGTERM (finished photos kept with their report; --resume finishes)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "protect", help="protect photos or folders (albums) against AI identity copying",
        description="Protect face photos. Originals are only read; protected copies are written "
        "to OUT/<album>/<name>-protected.<ext> with manifest.json and report.html per album.",
        epilog=EXIT_CODES_HELP)
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                   help="photos and/or folders (a folder is one album by default)")
    p.add_argument("-o", "--output", type=Path, metavar="OUT", help="output folder")
    p.add_argument("--preset", choices=sorted(PRESETS), default="medium",
                   help="protection strength (default: medium)")
    p.add_argument("--eps", type=float, help="the zero-shot shield's budget on the faces in "
                   "1/255 steps, on top of the fine-tuning shield's (overrides the preset)")
    p.add_argument("--eps-ft", dest="eps_ft", type=float, help="the fine-tuning shield's budget "
                   "on the whole photo in 1/255 steps (overrides the preset; Medium: 7)")
    p.add_argument("--layers", choices=[x.value for x in Layers], help="which shields run "
                   "(default: both)")
    p.add_argument("--format", choices=[f.value for f in OutputFormat], default="png")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality 1-100")
    p.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (never GPS or orientation) in the outputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="OUT",
                   help="continue an interrupted job in OUT (inputs and options come from its "
                   "journal when no INPUT is given)")
    p.add_argument("-r", "--recursive", action="store_true", help="also read sub-folders")
    p.add_argument("--albums", choices=[m.value for m in AlbumMode], default="folder",
                   help="grouping: one album per folder (default), one for all, one per photo")
    p.add_argument("--pipeline", type=Path, metavar="DIR",
                   help="a local Stable Diffusion folder (diffusers format) for the fine-tuning "
                   "shield instead of the downloaded sd15")
    p.add_argument("--no-report", action="store_true", help="skip manifest.json/report.html")
    p.add_argument("--export-unprotected", action="store_true",
                   help="also write photos no shield could change (no face found), as "
                   "<name>-unprotected.<ext>; by default they are only listed")
    p.add_argument("--yes", action="store_true", help="do not ask before a very long job")
    p.add_argument("--json", dest="json_local", action="store_true", default=argparse.SUPPRESS,
                   help="JSON lines on stdout (same as the global --json)")
    steps = p.add_argument_group("explicit step counts (override the preset)")
    # Layer 1 per epoch: iter1 attention-loss PGD steps, iter2 denoising-loss PGD steps,
    # iter3 fine-tuning steps of the dynamic surrogate (the older names stay accepted).
    for flags, field in ((("--epochs", "--rounds"), "layer1_rounds"),
                         (("--iter1", "--pgd-steps"), "layer1_pgd_steps"),
                         (("--iter2", "--denoise-steps"), "layer1_denoise_steps"),
                         (("--iter3", "--lora-steps"), "layer1_lora_steps"),
                         (("--prior-steps",), "prior_steps"),
                         (("--layer2-steps",), "layer2_steps"),
                         (("--polish-steps",), "polish_steps"), (("--seed",), "seed")):
        steps.add_argument(*flags, dest=field, type=int, metavar="N")
    p.set_defaults(func=run)
    # Every option of the parser is a job setting except where and how to run: a new option is
    # covered by the resume guard without a second list to keep.
    _JOB_OPTIONS.update({a.dest: a.option_strings[0] for a in p._actions
                         if a.option_strings and a.dest not in _RUN_OPTIONS})
    _JOB_DEFAULTS.update({dest: p.get_default(dest) for dest in _JOB_OPTIONS})


# ------------------------------------------------------------------ building the job
class UsageError(Exception):
    pass


# Options that say where and how to run, not what the job is: a bare ``--resume OUT`` takes
# every other option (the job's settings) from the journal.
_RUN_OPTIONS = frozenset({"help", "output", "device", "resume", "pipeline", "yes",
                          "json_local"})
# dest -> the option's first flag, and its default: filled from the parser by register().
_JOB_OPTIONS: dict[str, str] = {}
_JOB_DEFAULTS: dict[str, Any] = {}


def _settings_given(args: argparse.Namespace) -> list[str]:
    """The job options given on the command line (values other than their defaults)."""
    return [flag for dest, flag in _JOB_OPTIONS.items()
            if dest in _JOB_DEFAULTS and hasattr(args, dest)
            and getattr(args, dest) != _JOB_DEFAULTS[dest]]


def build_job(args: argparse.Namespace) -> ProtectJob:
    from dladiff_app.core.journal import Journal, job_from_dict

    resume_dir = Path(args.resume) if isinstance(args.resume, str) else None
    out = args.output or resume_dir
    if out is None:
        raise UsageError("say where the protected photos go: -o OUT (or --resume OUT)")
    if args.resume and not args.inputs:
        given = _settings_given(args)
        if given:
            raise UsageError(
                f"--resume {out} continues the job with the settings it was started with, so "
                f"{', '.join(given)} would be ignored. To protect its photos with other settings, "
                f"name them: dladiff protect PHOTOS -o {out} --resume {' '.join(given)} ... "
                "(the earlier protections are kept)")
        try:
            journal = Journal(out)
        except DladiffError as exc:  # e.g. a journal the user may not read
            raise UsageError(str(exc)) from exc
        if journal.job is None and journal.exists:
            bad = journal.torn_lines + journal.damaged
            raise UsageError(
                f"cannot resume {out} on its own: its job journal is there, but the record of "
                f"the job's photos and settings is damaged ({bad} damaged line(s)). Name them "
                f"again with --resume, e.g. `dladiff protect PHOTOS -o {out} --resume`: the "
                "photos it already protected are kept, not redone")
        if journal.job is None:
            raise UsageError(f"nothing to resume: {out} holds no DLADiff job journal")
        try:
            job = job_from_dict(journal.job, resume=True)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(
                f"cannot resume {out}: its job journal is damaged or was written by another "
                f"version ({type(exc).__name__}: {exc}); protect the photos into a new folder"
            ) from exc
        # The folder named now is the job folder, even if it was moved since the job began.
        return dataclasses.replace(job, output_dir=out,
                                   device=args.device if args.device != "auto" else job.device,
                                   pipeline=args.pipeline or job.pipeline)
    if not args.inputs:
        raise UsageError("give at least one photo or folder to protect")
    try:
        overrides = {name: getattr(args, name) for name in (
            "layer1_rounds", "layer1_pgd_steps", "layer1_denoise_steps", "layer1_lora_steps",
            "prior_steps", "layer2_steps", "polish_steps", "seed")}
        settings = preset(args.preset).with_overrides(
            eps=args.eps, eps_ft=args.eps_ft, layers=Layers(args.layers) if args.layers else None, **overrides)
        export = ExportOptions(format=OutputFormat(args.format), quality=args.quality,
                               keep_metadata=args.keep_metadata, write_report=not args.no_report,
                               export_unprotected=args.export_unprotected)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return ProtectJob(inputs=tuple(args.inputs), output_dir=out, settings=settings,
                      export=export, device=args.device, recursive=args.recursive,
                      album_mode=AlbumMode(args.albums), resume=bool(args.resume),
                      pipeline=args.pipeline)


# ------------------------------------------------------------------ output
def event_dict(event: Event) -> dict[str, Any]:
    d = {"event": type(event).__name__}
    if isinstance(event, PhotoDone):
        d.update(photo_id=event.photo_id, result=event.result.to_dict())
    else:
        d.update(dataclasses.asdict(event))
    return json_safe(d)  # type: ignore[no-any-return]


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _score_text(score: IdentityScore | None) -> str:
    if score is None or score.value is None:
        return "-"
    return f"{score.value:.3f} {score.verdict}"


def _face_change_cell(r: PhotoResult) -> str:
    """E.g. "not visible at 100% (0.8 JND, ΔE 1.1, SSIM 0.981)": the words and figures of the
    change on the faces (the verdict from the predicted visibility; older records without it
    from the colour difference, visible from about 2.3)."""
    if r.face_de_mean is None and r.face_jnd is None:
        return "-"
    figures = [f"{r.face_jnd:.1f} JND"] if r.face_jnd is not None else []
    if r.face_de_mean is not None:
        figures.append(f"ΔE {r.face_de_mean:.1f}")
    if r.face_ssim is not None:
        figures.append(f"SSIM {r.face_ssim:.3f}")
    words = (seen_level(r.face_jnd) if r.face_jnd is not None
             else change_level(r.face_de_mean or 0.0))
    return f"{words} ({', '.join(figures)})"


def results_table(results: list[PhotoResult]) -> str:
    """One row per protected photo and identity encoder: the subject face's identity score on
    the file as written and after sharing (JPEG q75 + 1080 px), with PSNR/SSIM/max change."""
    rows = [("photo", "faces", "encoder", "protected file", "after sharing", "PSNR", "SSIM",
             "max", "change on the face")]
    for r in results:
        shared = {s.encoder: s for s in r.scores_after_sharing}
        quality = (f"{r.psnr:.1f}" if r.psnr is not None else "-",
                   f"{r.ssim:.3f}" if r.ssim is not None else "-",
                   f"{r.linf:.0f}/255" if r.linf is not None else "-",
                   _face_change_cell(r))
        for i, s in enumerate(r.scores or [None]):  # type: ignore[list-item]
            first = i == 0
            rows.append((Path(r.source).name if first else "", str(r.faces) if first else "",
                         s.encoder if s else "-", _score_text(s),
                         _score_text(shared.get(s.encoder)) if s else "-",
                         *(quality if first else ("",) * len(quality))))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if any(s.same_person is not None for r in results
           for s in (*r.scores, *r.scores_after_sharing)):
        lines.append(UNSEEN_MODELS_NOTE)
    return "\n".join(lines)


# The progress line names stages in the words the app uses (the JSON keeps the engine's ids).
STAGE_WORDS = {"load": "loading", "prior": "learning", "layer1": "fine-tune",
               "layer2": "zero-shot", "polish": "polish", "score": "measure", "save": "saving"}


class Printer:
    """Human output: bars on a terminal (redrawn in place), plain lines otherwise."""

    def __init__(self, out: TextIO, err: TextIO, as_json: bool) -> None:
        self.out, self.err, self.as_json = out, err, as_json
        self.tty = (not as_json) and err.isatty()
        self.names: dict[int, str] = {}
        self.failures: list[str] = []
        self.unprotected: list[str] = []
        self.results: list[PhotoResult] = []
        self.earlier: list[PhotoResult] = []  # protected by an earlier run, kept as they were
        self.skipped = 0  # nothing done to them in this run, and no earlier protection either
        self.total = 0
        self._last = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhotoFailed):
            self.failures.append(event.reason)
        if isinstance(event, PhotoUnprotected):
            self.unprotected.append(f"{Path(event.source).name}: {event.reason}")
        if self.as_json:
            print(json_text(event_dict(event)), file=self.out, flush=True)
            return
        if isinstance(event, Progress):
            now = time.monotonic()
            if self.tty and (now - self._last > 0.1 or event.step == event.total):
                self._last = now
                name = self.names.get(event.photo_id, "album") if event.photo_id is not None \
                    else "album"
                photo = event.step / event.total if event.total else 0.0
                stage = STAGE_WORDS.get(event.stage, event.stage)
                line = (f"\r{name[:24]:24} {stage:9} {_bar(photo, 12)} "
                        f"overall {_bar(event.overall)} {event.overall * 100:5.1f}% "
                        f"ETA {_clock(event.eta_s)}")
                self.err.write(line[:160].ljust(110))
                self.err.flush()
            return
        self._line(self._text(event))

    def _text(self, event: Event) -> str | None:
        if isinstance(event, JobStarted):
            self.total = event.total_photos
            unusable = (f"; {event.unusable} input(s) cannot be used (named below)"
                        if event.unusable else "")
            return (f"Protecting {event.total_photos - event.unusable} photo(s) in "
                    f"{event.message} on {event.device}{unusable}")
        if isinstance(event, PhotoStarted):
            self.names[event.photo_id] = Path(event.source).name
            return None
        if isinstance(event, PhotoDone):
            r = event.result
            self.results.append(r)
            scores = ", ".join(f"{s.encoder} {s.verdict}" for s in r.scores) or "not scored"
            return (f"done    {Path(r.source).name} -> {r.output} ({r.seconds:.1f} s; "
                    f"PSNR {r.psnr:.1f} dB; {scores})" if r.psnr is not None else
                    f"done    {Path(r.source).name} -> {r.output}")
        if isinstance(event, PhotoFailed):
            return f"FAILED  {event.reason}"
        if isinstance(event, PhotoUnprotected):
            where = f" (exported unchanged as {event.output})" if event.output else ""
            return f"NOT PROTECTED {Path(event.source).name}: {event.reason}{where}"
        if isinstance(event, PhotoSkipped):
            if event.result is not None:
                self.earlier.append(event.result)
            else:
                self.skipped += 1
            return f"skipped {Path(event.source).name}: {event.reason}"
        if isinstance(event, Notice):
            return f"note    {event.message}"
        if isinstance(event, JobFinished):
            return (f"Finished in {_clock(event.seconds)}: {self.counts_line()}."
                    + ("\n" + results_table(self.results) if self.results else "")
                    + "".join(f"\n{v.text}" for v in verdicts(self.results)))
        return None  # JobCancelled: run() says how the job stopped and how to finish it

    def counts_line(self) -> str:
        """Each photo of the run counted once, by what happened to it (the same rule as the
        app's: "protected" only when every face model reads another person after sharing)."""
        recognised = sum(bool(still_recognising(r)) for r in self.results)
        parts = [f"{len(self.results) - recognised} protected"]
        if recognised:
            parts.append(f"{recognised} changed but still recognised by a face model")
        parts += [f"{len(self.earlier)} already done", f"{len(self.unprotected)} NOT protected",
                  f"{len(self.failures)} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped")
        return ", ".join(parts)

    def _line(self, text: str | None) -> None:
        if text is None:
            return
        if self.tty:
            self.err.write("\r" + " " * 110 + "\r")
        print(readable(text), file=self.err if self.tty else self.out, flush=True)


# ------------------------------------------------------------------ the long-job check
def long_job_warning(job: ProtectJob, device_kind: str, pipeline: dict[str, Any] | None,
                     n_photos: int) -> str | None:
    """The sentence to show when the fine-tuning shield would take hours here, else None.

    The estimate uses the per-step costs measured for the full SD 1.5 architecture on a CPU
    (``engine.services``); a small pipeline (a test or a distilled model) is not estimated."""
    from dladiff_app.engine.services import estimate_layer1_seconds

    if not job.settings.layers.finetune or pipeline is None:
        return None
    if pipeline.get("weights_bytes", 0) < 1_000_000_000:
        return None
    est = estimate_layer1_seconds(job.settings, n_photos, device_kind)
    if est is None or est < HOURS_WARNING_S:
        return None
    return (f"The fine-tuning shield would take about {est / 3600:.1f} hours on this "
            f"{device_kind.upper()} for {n_photos} photo(s) ({job.settings.layer1_total_pgd} "
            "PGD steps at ~22 s each). Use --layers zeroshot to protect against zero-shot "
            "tools in minutes, or run on a GPU.")


def budgets_line(s: ProtectionSettings) -> str:
    """Both layers' budgets as the job will use them, in one line."""
    parts = []
    if s.layers.finetune:
        parts.append(f"fine-tuning shield {s.finetune_eps:g}/255 on the whole photo")
    if s.layers.zeroshot:
        parts.append(f"zero-shot shield {s.eps:g}/255 on the faces"
                     + (" on top" if s.layers.finetune else ""))
    return f"Budgets (preset {s.preset}): " + ", ".join(parts) + "."


def _confirm(message: str, args: argparse.Namespace, printer: Printer) -> bool:
    if printer.as_json:
        print(json.dumps({"event": "Estimate", "message": message}), file=printer.out, flush=True)
        return True
    print(message, file=sys.stderr, flush=True)
    if args.yes or not sys.stdin.isatty():
        return True
    answer = input("Continue anyway? [y/N] ").strip().lower()
    return answer in ("y", "yes")


# ------------------------------------------------------------------ entry point
def run(args: argparse.Namespace) -> int:
    as_json = bool(getattr(args, "json", False) or getattr(args, "json_local", False))
    printer = Printer(sys.stdout, sys.stderr, as_json)
    try:
        job = build_job(args)
    except UsageError as exc:
        print(readable(f"dladiff protect: {exc}"), file=sys.stderr)
        return 2
    from dladiff_app.core.albums import check_output_folder, discover_inputs
    from dladiff_app.core.cancel import CancelToken

    try:  # before the models load: a wrong -o is said at once
        check_output_folder(job.output_dir, job.inputs)
    except UnusableOutputError as exc:
        print(readable(f"dladiff protect: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    from dladiff_app.engine.runner import run_job
    from dladiff_app.engine.services import build_kit

    device = job.device
    if device == "auto":  # the device chosen in the app's settings, if any
        from dladiff_app.core.settings import load_settings

        device = load_settings().device
    try:
        # Models come from the user's store: downloads plus the local copies in the settings.
        kit = build_kit(job.settings, device=device, pipeline_dir=job.pipeline)
    except DladiffError as exc:
        print(readable(f"dladiff protect: {exc}"), file=sys.stderr)
        return 2
    n = len(discover_inputs(job.inputs, recursive=job.recursive, exclude=job.output_dir).files)
    if not as_json:
        print(budgets_line(job.settings), file=sys.stderr, flush=True)
    warning = long_job_warning(job, kit.device_kind, kit.models.get("sd_pipeline"), n)
    if warning and not _confirm(warning, args, printer):
        print("Nothing was changed.", file=sys.stderr)
        return 2
    from dladiff_app.cli.interrupt import stop_on_signals

    token = CancelToken()
    try:
        with stop_on_signals(token) as stop:
            summary = run_job(job, kit, printer, token)
    except (JobConflictError, NothingToProtectError, UnusableOutputError) as exc:
        print(readable(f"dladiff protect: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except DladiffError as exc:
        print(readable(f"dladiff protect: {exc}"), file=sys.stderr)
        return EXIT_FAILED
    if printer.failures and not as_json:
        print(f"{len(printer.failures)} photo(s) failed:", file=sys.stderr)
        for reason in printer.failures:
            print(readable(f"  {reason}"), file=sys.stderr)
    if printer.unprotected and not as_json:
        print(f"{len(printer.unprotected)} photo(s) are NOT protected (no -protected file was "
              "written for them):", file=sys.stderr)
        for reason in printer.unprotected:
            print(readable(f"  {reason}"), file=sys.stderr)
    if not as_json:
        folders = sorted({Path(r.output).parent for r in (*printer.results, *printer.earlier)})
        for report in filter(None, map(report_for, folders)):
            print(readable(f"Report: {report}"), flush=True)
    if summary.cancelled:
        out = Path(summary.output_dir)
        print(readable(f"Stopped ({stop.name}) after {summary.done} photo(s) protected: they "
                       f"are in {out} with their manifest and report. To finish the job: "
                       f"dladiff protect --resume {shlex.quote(str(out))}"), file=sys.stderr)
        return stop.exit_code
    return exit_code(summary)


def exit_code(summary: JobSummary) -> int:
    """The documented exit code of a run that was not stopped (see the module docstring; a
    stopped run exits with its signal's code, ``cli.interrupt``)."""
    if summary.failed:
        return EXIT_FAILED
    return EXIT_UNPROTECTED if summary.unprotected else EXIT_OK
