"""Filter accuracy on real labelled frames (`labels.csv`: person / no_person / animal_only / bad);
writes BENCHMARKS.md.

    python bench/eval_filter.py [--frames ../shared/data/frames] [--weights yolo11n.pt]
                                [--person-model NAME] [--head-model NAME]

For each detector that loads (YOLO from `--weights`; the anime person and head models from the
Hugging Face cache, or the hub when online): precision and recall of the `person` label at several
confidence thresholds, alone and combined (`mode: any`), and frames/s. A detector whose model is
not here is reported as not measured: random weights are never reported as accuracy. The junk
checks (dark/flat, blur, near-duplicates) need no weights, so their effect is always measured:
above all, how many person frames they would throw away.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import machine, publish  # noqa: E402
from ghibli_async.config import AnimeDetectorConfig, DetectorConfig, FilterConfig, YoloDetectorConfig  # noqa: E402
from ghibli_async.detect import Detector, load_detectors  # noqa: E402
from ghibli_async.errors import UserError  # noqa: E402
from ghibli_async.facts import (
    Box,  # noqa: E402
    FrameFacts,  # noqa: E402
)
from ghibli_async.filter_rules import decide_all  # noqa: E402
from ghibli_async.imaging import look_at_frame  # noqa: E402

THRESHOLDS = (0.05, 0.1, 0.15, 0.25, 0.4)


def load_labels(folder: Path) -> dict[str, str]:
    with (folder / "labels.csv").open(encoding="utf-8") as stream:
        return {row["file"]: row["label"] for row in csv.DictReader(stream)}


def precision_recall(predicted: dict[str, bool], labels: dict[str, str]) -> tuple[float, float]:
    tp = sum(1 for name, yes in predicted.items() if yes and labels[name] == "person")
    fp = sum(1 for name, yes in predicted.items() if yes and labels[name] != "person")
    fn = sum(1 for name, yes in predicted.items() if not yes and labels[name] == "person")
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "frames"
    parser.add_argument("--frames", type=Path, default=default)
    parser.add_argument("--weights", default=None, help="YOLO weights file (e.g. yolo11n.pt)")
    parser.add_argument("--person-model", default=None, help="anime person model (default: the config's)")
    parser.add_argument("--head-model", default=None, help="anime head model (default: the config's)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (args.frames / "labels.csv").exists():
        print(f"no labelled frames at {args.frames}: nothing to measure")
        return
    labels = load_labels(args.frames)
    names = sorted(labels)
    looks = {name: look_at_frame(str(args.frames / name), 640) for name in names}
    lines = [
        f"{date.today().isoformat()}, {machine()}. {len(names)} labelled real frames from {args.frames.name}/ "
        f"({sum(1 for v in labels.values() if v == 'person')} person)."
    ]
    lines += junk_checks(names, looks, labels)
    configs: list[DetectorConfig] = [
        AnimeDetectorConfig(name="anime", target="person", model=args.person_model),
        AnimeDetectorConfig(name="anime", target="head", model=args.head_model),
    ]
    if args.weights:
        configs.insert(0, YoloDetectorConfig(weights=args.weights))
    else:
        lines += [
            "",
            "yolo: **not measured**: no weights given (none can be downloaded here); rerun with "
            "`--weights yolo11n.pt` where the file is.",
        ]
    detectors = []
    for config in configs:
        try:
            detectors.append(load_detectors(FilterConfig(detectors=[config]))[0])
        except UserError as exc:
            lines += ["", f"{config.key}: **not measured**: {exc}"]
    lines += detector_rows(detectors, names, looks, labels)
    body = "\n".join(lines)
    publish("Filter accuracy on real frames (`bench/eval_filter.py`)", body, write=not args.no_write)


def junk_checks(names: list[str], looks: dict, labels: dict[str, str]) -> list[str]:
    """The dark/blur/duplicate checks alone (every frame counted as showing a person)."""
    everyone = {  # every detector of the default filter sees a person: only the junk checks decide
        detector.key: [Box(0.0, 0.0, 1.0, 1.0, 1.0, "person")] for detector in FilterConfig().detectors
    }
    facts = [
        FrameFacts(i, looks[n].brightness, looks[n].contrast, looks[n].sharpness, looks[n].phash, everyone, None, False)
        for i, n in enumerate(names)
    ]
    decided = decide_all(facts, FilterConfig())
    junk = {names[i]: d.reason for i, d in decided.items() if d.status == "rejected"}
    lost = [n for n in junk if labels[n] == "person"]
    return [
        "",
        f"Junk-frame checks with the default thresholds reject {len(junk)} frame(s): "
        + (", ".join(f"{n} ({reason}, labelled {labels[n]})" for n, reason in junk.items()) or "none")
        + f". Person frames lost to them: {len(lost)}.",
    ]


def detector_rows(detectors: list[Detector], names: list[str], looks: dict, labels: dict[str, str]) -> list[str]:
    """A precision/recall table per detector, then one for them all together (`mode: any`)."""
    found: dict[str, list[list[Box]]] = {}
    rows = []
    for detector in detectors:
        started = time.perf_counter()
        found[detector.key] = detector.detect([looks[n].pixels for n in names])
        rate = len(names) / (time.perf_counter() - started)
        rows += [
            "",
            f"`{detector.signature}`, {rate:.1f} frames/s:",
            *threshold_table(found[detector.key], names, labels),
        ]
    if len(found) > 1:
        together = [[box for boxes in per_frame for box in boxes] for per_frame in zip(*found.values())]
        rows += [
            "",
            f"Combined ({' + '.join(found)}, any fires at the threshold):",
            *threshold_table(together, names, labels),
        ]
    if found:
        rows += ["", "Target for the combination: recall ≥ 0.95 at precision ≥ 0.85."]
    return rows


def threshold_table(found: list[list[Box]], names: list[str], labels: dict[str, str]) -> list[str]:
    rows = ["", "| confidence | precision | recall |", "|---|---|---|"]
    for threshold in THRESHOLDS:
        predicted = {n: any(b.score >= threshold for b in boxes) for n, boxes in zip(names, found)}
        precision, recall = precision_recall(predicted, labels)
        rows.append(f"| {threshold} | {precision:.2f} | {recall:.2f} |")
    return rows


if __name__ == "__main__":
    main()
