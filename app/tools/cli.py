"""The ``gridwatch`` command line.

Each subcommand imports what it needs when it runs, so ``gridwatch simulate`` works without scikit-learn and
``gridwatch --help`` is instant. Options override the environment variables of the same meaning (the README's
configuration table); ``serve`` reads the HTTP service's ``app.serving.settings.Settings``, the commands that work on
MODEL_DIR only ``app.scoring.settings.ModelSettings``, so a serving-only setting never stops them. Each handler is a
thin adapter: the policies (train -> gate -> promote is ``app.detector.promotion``) live in the packages, tested
without argparse. Each subcommand's parser sits beside its handler.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from app import __version__

if TYPE_CHECKING:  # pydantic is a backend dependency: `gridwatch simulate` runs without it
    from app.detector.promotion import GateDecision
    from app.detector.registry import ModelStore, Pruned
    from app.scoring.settings import ModelSettings

MODEL_DIR_HELP = "model folder (env MODEL_DIR, default models)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {value}")
    return value


def _timestamp(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _kinds(text: str) -> list[str]:
    from app.sim import AnomalyKind

    kinds = [part.strip() for part in text.split(",") if part.strip()]
    valid = {kind.value for kind in AnomalyKind}
    unknown = [kind for kind in kinds if kind not in valid]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown}; choose from {sorted(valid)}")
    return kinds


def _model_command_settings(model_dir: str | None, *, log_level: str | None = None) -> ModelSettings:
    """The start of every command that works on MODEL_DIR: ``--model-dir`` over the environment, the model
    settings only (never the server's), and logging (at the settings' level unless ``log_level`` says otherwise)."""
    _export(model_dir=model_dir)
    from app.scoring.settings import ModelSettings
    from app.serving.telemetry.logs import configure_logging

    settings = ModelSettings()
    configure_logging(log_level or settings.log_level)
    return settings


def _add_model_dir(parser: argparse.ArgumentParser, *, default: object = None) -> None:
    parser.add_argument("--model-dir", default=default, help=MODEL_DIR_HELP)


def _export(**overrides: object) -> None:
    """Make CLI options visible to ``Settings`` (and to uvicorn's worker processes, which inherit the env)."""
    for name, value in overrides.items():
        if value is not None:
            os.environ[name.upper()] = str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridwatch", description="Anomaly detection on electricity-grid readings.")
    parser.add_argument("--version", action="version", version=f"gridwatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands_in_order = (
        _add_serve,
        _add_stream,
        _add_train,
        _add_evaluate,
        _add_models,
        _add_simulate,
        _add_load,
        _add_publish,
        _add_bench,
        _add_up,
    )
    for add in commands_in_order:
        add(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the HTTP API (uvicorn)")
    serve.add_argument("--host", help="interface to bind (env HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (env PORT, default 8000)")
    serve.add_argument("--workers", type=_positive_int, help="worker processes (env WORKERS, default 1)")
    _add_model_dir(serve)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    _export(host=args.host, port=args.port, workers=args.workers, model_dir=args.model_dir)
    from app.serving.server import run_server
    from app.serving.settings import Settings

    run_server(Settings())
    return 0


def _add_stream(commands: argparse._SubParsersAction) -> None:
    stream = commands.add_parser(
        "stream", help="score the readings feeders publish to NATS JetStream (MQTT or NATS), one result per reading"
    )
    stream.add_argument("--nats-url", help="the NATS server (env NATS_URL, default nats://127.0.0.1:4222)")
    stream.add_argument("--host", help="interface of /livez, /health, /metrics (env HOST, default 127.0.0.1)")
    stream.add_argument("--port", type=int, help="port of /livez, /health, /metrics (env PORT, default 8000)")
    _add_model_dir(stream)
    stream.set_defaults(handler=_stream)


def _stream(args: argparse.Namespace) -> int:
    _export(nats_url=args.nats_url, host=args.host, port=args.port, model_dir=args.model_dir)
    from app.serving.telemetry.logs import configure_logging
    from app.stream.runner import run_stream
    from app.stream.settings import StreamSettings

    settings = StreamSettings()
    configure_logging(settings.log_level, settings.log_format)
    run_stream(settings)
    return 0


def _add_train(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train a model on simulated data or on recorded readings (--data) and save it atomically"
    )
    _add_model_dir(train)
    train.add_argument(
        "--data",
        type=Path,
        help="CSV or Parquet file of recorded readings (columns voltage, current, frequency; optional is_anomaly, "
        "whose true rows are left out of training)",
    )
    train.add_argument(
        "--holdout",
        type=_rate,
        default=0.2,
        help="with a labelled --data file: the share of rows, from its end, kept out of training to evaluate on",
    )
    train.add_argument("--drop-invalid", action="store_true", help="leave out rows with bad values instead of failing")
    promotion = train.add_mutually_exclusive_group()
    promotion.add_argument(
        "--promote", action="store_true", help="make the new version the active one (the first version always is)"
    )
    promotion.add_argument(
        "--promote-if-better",
        action="store_true",
        help="with a labelled --data file: promote only if the new version's F1 on the held-out rows is not worse "
        "than the active version's",
    )
    train.add_argument("--n-estimators", type=_positive_int)
    train.add_argument("--max-samples", type=_positive_int)
    train.add_argument("--contamination", type=float)
    train.add_argument("--train-samples", type=_positive_int)
    train.add_argument("--seed", type=int, help="random_state of the forest and the training data")
    train.add_argument("--json", action="store_true", help="print the metadata as JSON")
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    settings = _model_command_settings(args.model_dir)
    from dataclasses import replace

    from app.detector.model import ModelConfig
    from app.detector.promotion import train_and_promote

    overrides = {
        "n_estimators": args.n_estimators,
        "max_samples": args.max_samples,
        "contamination": args.contamination,
        "train_samples": args.train_samples,
        "random_state": args.seed,
    }
    config = replace(ModelConfig(), **{k: v for k, v in overrides.items() if v is not None})
    if args.promote_if_better and args.data is None:
        raise ValueError("--promote-if-better compares on held-out labelled readings: give them with --data FILE")
    readings = None
    if args.data is not None:
        from app import FEATURES
        from app.detector.dataset import read_readings

        readings = read_readings(args.data, FEATURES, drop_invalid=args.drop_invalid)
    store = settings.model_store()
    trained = train_and_promote(
        store, config, readings=readings, holdout=args.holdout, promote=args.promote, if_better=args.promote_if_better
    )
    if trained.decision is not None:
        _report_gate(trained.decision)
    if settings.model_keep_versions:  # after the gate: the version it just set aside counts among the newest
        _report_pruned(store.prune(settings.model_keep_versions))
    detector = trained.detector
    if args.json:
        print(json.dumps(detector.metadata, indent=2))
    else:
        from app.tools.report import print_training

        print_training(detector)
        if not trained.active and not args.promote_if_better:  # the gate has said why already
            print(
                f"version {detector.version} is not active (the active one is {store.active_version()}): "
                f"`gridwatch models promote {detector.version}` activates it",
                file=sys.stderr,
            )
    return 0


def _prune(args: argparse.Namespace, keep: int, store: ModelStore) -> int:
    if keep == 0:
        print("MODEL_KEEP_VERSIONS is 0: every version is kept (give --keep N to prune once)", file=sys.stderr)
        return 0
    pruned = store.prune(keep, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(dataclasses.asdict(pruned), indent=2))
    else:
        _report_pruned(pruned)
    return 0


def _report_pruned(pruned: Pruned) -> None:
    """One line on stderr: what pruning removed and freed (or would), and how many versions remain."""
    verb = "would remove" if pruned.dry_run else "removed"
    names = ", ".join(pruned.removed) or "nothing"
    print(
        f"pruning {verb} {len(pruned.removed)} version(s) ({pruned.freed_bytes / 1e6:.1f} MB): {names}; "
        f"{len(pruned.kept)} kept",
        file=sys.stderr,
    )


def _report_gate(decision: GateDecision) -> None:
    """Print a promotion gate's decision, already applied (one line on stderr, for a Job's log)."""
    verdict = "promoted" if decision.promote else f"not promoted, {decision.active} stays active"
    print(
        f"version {decision.candidate} {verdict}: {decision.reason}, on {decision.readings} readings", file=sys.stderr
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="precision/recall/F1/ROC-AUC on labelled simulated data or a labelled file (--data)"
    )
    _add_model_dir(evaluate)
    evaluate.add_argument(
        "--data", type=Path, help="CSV or Parquet file of labelled readings (needs an is_anomaly column)"
    )
    evaluate.add_argument(
        "--drop-invalid", action="store_true", help="leave out rows with bad values instead of failing"
    )
    evaluate.add_argument("--anomaly-rate", type=_rate, default=0.02)
    evaluate.add_argument("-n", "--readings", type=_positive_int, default=20_000)
    evaluate.add_argument("--seed", type=int, default=2026)
    evaluate.add_argument("--kinds", type=_kinds, help="comma-separated anomaly kinds to inject")
    evaluate.add_argument(
        "--sweep",
        nargs="*",
        type=float,
        metavar="CONTAMINATION",
        help="also show what other contamination values would give (default: a standard set)",
    )
    evaluate.add_argument(
        "--explain",
        action="store_true",
        help="also measure the explanations: how often the faulty feature of each single-feature fault ranks first",
    )
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    settings = _model_command_settings(args.model_dir)
    from app import FEATURES
    from app.detector.evaluate import (
        evaluate_detector,
        evaluate_recorded,
        explanation_quality,
        sweep_contamination,
    )
    from app.detector.loading import load_detector
    from app.sim import DEFAULT_ANOMALY_KINDS
    from app.tools.report import print_evaluation, print_explanation_quality, print_sweep

    readings = None
    if args.data is not None:
        from app.detector.dataset import read_readings

        readings = read_readings(args.data, FEATURES, drop_invalid=args.drop_invalid, require_labels=True)
    # Read-only by its name: evaluating never trains or promotes, whatever TRAIN_IF_MISSING says.
    detector = load_detector(settings.model_store(), train_if_missing=False)
    if readings is None:
        report = evaluate_detector(
            detector,
            n=args.readings,
            anomaly_rate=args.anomaly_rate,
            seed=args.seed,
            kinds=args.kinds or DEFAULT_ANOMALY_KINDS,
        )
    else:
        report = evaluate_recorded(detector, readings)
    sweep = None
    if args.sweep is not None:
        candidates = args.sweep or [0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02]
        sweep = sweep_contamination(
            detector, candidates, n=args.readings, anomaly_rate=args.anomaly_rate, seed=args.seed, readings=readings
        )
    quality = explanation_quality(detector, seed=args.seed) if args.explain else None
    if args.json:
        document: dict[str, object] = {"model_version": detector.version, "report": report.to_dict()}
        if sweep is not None:
            document["sweep"] = [{"contamination": c, **r.to_dict()} for c, r in sweep]
        if quality is not None:
            document["explanations"] = [dataclasses.asdict(row) for row in quality]
        print(json.dumps(document, indent=2))
    else:
        print_evaluation(detector, report)
        if sweep is not None:
            print_sweep(detector, sweep)
        if quality is not None:
            print_explanation_quality(detector, quality)
    return 0


def _add_models(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the model versions in MODEL_DIR, promote one, roll back")
    _add_model_dir(models)
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    # --model-dir is accepted after the action too (`models list --model-dir DIR`), as `train` accepts it anywhere;
    # SUPPRESS keeps an action that does not name it from overwriting the value given before the action.
    after_action = argparse.ArgumentParser(add_help=False)
    _add_model_dir(after_action, default=argparse.SUPPRESS)
    listing = actions.add_parser(
        "list", help="every version, its evaluation, and which one is active", parents=[after_action]
    )
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    promote = actions.add_parser(
        "promote", help="make VERSION the active model (servers pick it up)", parents=[after_action]
    )
    promote.add_argument("version")
    promote.add_argument(
        "--if-better",
        action="store_true",
        help="only if VERSION's F1 on the labelled --data file is not worse than the active version's",
    )
    promote.add_argument("--data", type=Path, help="labelled CSV or Parquet file the --if-better gate compares on")
    promote.add_argument("--drop-invalid", action="store_true", help="leave out rows with bad values")
    actions.add_parser("rollback", help="make the previously active version active again", parents=[after_action])
    shadow = actions.add_parser(
        "shadow",
        help="name a challenger that scores every batch after the answer (metrics only), or --off",
        parents=[after_action],
    )
    chosen = shadow.add_mutually_exclusive_group(required=True)
    chosen.add_argument("version", nargs="?")
    chosen.add_argument("--off", action="store_true", help="stop shadow scoring")
    prune = actions.add_parser(
        "prune",
        help="remove old versions: keep the active, previous and shadow ones and the --keep newest",
        parents=[after_action],
    )
    prune.add_argument(
        "--keep", type=_positive_int, help="newest versions to keep besides those (env MODEL_KEEP_VERSIONS, default 10)"
    )
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.add_argument("--json", action="store_true", help="print the result as JSON")
    models.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    settings = _model_command_settings(args.model_dir)
    store = settings.model_store()
    if args.action == "promote" and args.if_better:
        if args.data is None:
            raise ValueError("--if-better compares on labelled readings: give them with --data FILE")
        from app import FEATURES
        from app.detector.dataset import read_readings
        from app.detector.promotion import gate

        readings = read_readings(args.data, FEATURES, drop_invalid=args.drop_invalid, require_labels=True)
        _report_gate(gate(store, args.version, readings))
    elif args.action == "promote":
        replaced = store.promote(args.version)
        print(f"active model: {args.version} (was {replaced or 'none'})")
    elif args.action == "rollback":
        print(f"active model: {store.rollback()}")
    elif args.action == "shadow":
        store.set_shadow(None if args.off else args.version)
        print(f"shadow model: {store.shadow_version() or 'none'}")
    elif args.action == "prune":
        return _prune(args, args.keep or settings.model_keep_versions, store)
    else:
        from app.detector.registry import RegistryError

        try:
            active, shadow = store.active_and_shadow()
        except RegistryError as error:  # still list the versions: the operator picks one to promote from them
            print(error, file=sys.stderr)
            active = shadow = None
        versions = [
            {
                **entry,
                "active": entry.get("version") == active or bool(entry.get("legacy")),
                "shadow": entry.get("version") == shadow,
                "problem": store.why_unusable(entry["version"]) if entry.get("version") else None,
            }
            for entry in store.versions()
        ]
        if args.json:
            print(json.dumps({"active": active, "shadow": shadow, "versions": versions}, indent=2))
        else:
            from app.tools.report import print_versions

            print_versions(versions)
    return 0


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    simulate = commands.add_parser("simulate", help="print simulated readings with ground truth")
    simulate.add_argument("-n", "--readings", type=_positive_int, default=10)
    simulate.add_argument("--anomaly-rate", type=_rate, default=0.0)
    simulate.add_argument("--kinds", type=_kinds, help="comma-separated anomaly kinds to inject")
    simulate.add_argument("--seed", type=int)
    simulate.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    simulate.add_argument(
        "--start",
        type=_timestamp,
        help="time of the first reading, ISO 8601 (default: now); with --seed the output is fully reproducible",
    )
    simulate.add_argument("--grid", choices=["eu", "na"], default="eu", help="230 V/50 Hz or 120 V/60 Hz")
    simulate.add_argument(
        "--format",
        choices=["jsonl", "json", "request", "csv", "parquet"],
        default="jsonl",
        help="one reading per line, a JSON array, a /predict request body, or a data file for `train --data` "
        "(csv, parquet: needs --out)",
    )
    simulate.add_argument("--out", type=Path, help="write to this file (atomically) instead of standard output")
    simulate.add_argument("--voltage-noise", type=float, help="sensor noise of the voltage, volts (default 1.0)")
    simulate.add_argument("--current-noise", type=float, help="relative noise of the current (default 0.05)")
    simulate.add_argument("--frequency-std", type=float, help="spread of the frequency, hertz (default 0.02)")
    simulate.set_defaults(handler=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from app.sim import DEFAULT_ANOMALY_KINDS, GridProfile, GridSimulator
    from app.tools.data_files import encode_readings, write_readings

    profile = GridProfile.north_american() if args.grid == "na" else GridProfile()
    noise = {
        "voltage_noise": args.voltage_noise,
        "current_noise": args.current_noise,
        "frequency_std": args.frequency_std,
    }
    profile = replace(profile, **{name: value for name, value in noise.items() if value is not None})
    simulator = GridSimulator(
        profile=profile,
        anomaly_rate=args.anomaly_rate,
        anomaly_kinds=args.kinds or DEFAULT_ANOMALY_KINDS,
        interval_s=args.interval,
        start=args.start,
        seed=args.seed,
    )
    records = simulator.batch(args.readings).to_records()
    if args.format in {"csv", "parquet"} or args.out is not None:
        if args.out is None:
            raise ValueError(f"--format {args.format} writes a file: give it with --out FILE")
        write_readings(records, args.out, args.format)
        print(f"wrote {len(records)} readings to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(encode_readings(records, args.format).decode())
    return 0


def _add_load(commands: argparse._SubParsersAction) -> None:
    load = commands.add_parser("load", help="open-loop load test of /predict (loopback only unless --allow-remote)")
    load.add_argument("--url", default="http://127.0.0.1:8000", help="the API (its /predict is loaded)")
    load.add_argument("--rps", type=float, default=50.0, help="requests per second to schedule")
    load.add_argument("--duration", type=float, default=10.0, help="seconds; stops by itself")
    load.add_argument("--batch-size", type=_positive_int, default=64, help="readings per request")
    load.add_argument("--workers", type=_positive_int, default=32, help="most requests in flight at once")
    load.add_argument("--anomaly-rate", type=_rate, default=0.01)
    load.add_argument("--no-keepalive", action="store_true", help="a new connection per request (spreads over pods)")
    load.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    load.add_argument("--seed", type=int)
    load.add_argument("--allow-remote", action="store_true", help="allow a target that is not this machine")
    load.add_argument("--json", action="store_true", help="print the summary as JSON")
    load.set_defaults(handler=_load)


def _load(args: argparse.Namespace) -> int:
    from app.tools.loadgen import LoadConfig, run_load
    from app.tools.report import LoadProgress, print_load_report

    config = LoadConfig(
        url=args.url,
        rps=args.rps,
        duration=args.duration,
        batch_size=args.batch_size,
        workers=args.workers,
        anomaly_rate=args.anomaly_rate,
        keepalive=not args.no_keepalive,
        timeout=args.timeout,
        allow_remote=args.allow_remote,
        seed=args.seed,
    )
    if args.json:
        report = run_load(config)
        print(json.dumps(report.to_dict(), indent=2))
    else:
        with LoadProgress(config.duration) as progress:
            report = run_load(config, progress.update)
        print_load_report(report)
    return 0 if report.succeeded else 1


def _add_publish(commands: argparse._SubParsersAction) -> None:
    publish = commands.add_parser(
        "publish", help="simulated feeders publishing readings over MQTT (loopback only unless --allow-remote)"
    )
    publish.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the MQTT listener (NATS's, for GridWatch)")
    publish.add_argument("--rate", type=float, default=100.0, help="readings per second, all sensors together")
    publish.add_argument("--duration", type=float, default=10.0, help="seconds; stops by itself")
    publish.add_argument("--count", type=_positive_int, help="stop after this many readings")
    publish.add_argument("--feeders", type=_positive_int, default=2)
    publish.add_argument("--sensors", type=_positive_int, default=5, help="sensors per feeder")
    publish.add_argument("--anomaly-rate", type=_rate, default=0.01)
    publish.add_argument("--seed", type=int)
    publish.add_argument("--allow-remote", action="store_true", help="allow a broker that is not this machine")
    publish.add_argument("--json", action="store_true", help="print the summary as JSON")
    publish.set_defaults(handler=_publish)


def _publish(args: argparse.Namespace) -> int:
    from app.tools.publish import PublishConfig, run_publish

    if args.rate <= 0 or args.duration <= 0:
        raise ValueError("--rate and --duration must be above 0")
    config = PublishConfig(
        url=args.url,
        rate=args.rate,
        duration=args.duration,
        count=args.count,
        feeders=args.feeders,
        sensors=args.sensors,
        anomaly_rate=args.anomaly_rate,
        seed=args.seed,
        allow_remote=args.allow_remote,
    )
    report = run_publish(config)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(
            f"published {report.published} readings in {report.seconds:.1f}s, {report.acknowledged} acknowledged "
            "by the broker"
        )
    return 0 if report.acknowledged == report.published else 1


def _sizes(text: str) -> list[int]:
    return [_positive_int(part) for part in text.split(",") if part.strip()]


def _add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="measure the scorer and the HTTP path against scikit-learn")
    _add_model_dir(bench)
    bench.add_argument("--sizes", type=_sizes, default=[1, 64, 1024, 65536], help="batch sizes, comma-separated")
    bench.add_argument("--min-seconds", type=float, default=0.5, help="time spent per scorer measurement")
    bench.add_argument("--http-duration", type=float, default=10.0, help="seconds per HTTP measurement")
    bench.add_argument("--connections", type=_positive_int, default=32)
    bench.add_argument("--fixed-rps", type=float, default=150.0, help="request rate of the latency measurement")
    bench.add_argument(
        "--profile-requests",
        type=_count,
        default=2000,
        help="requests profiled in process to split /predict into stages (0: no profile)",
    )
    bench.add_argument(
        "--ready-starts", type=_positive_int, default=3, help="starts timed per server until ready (median reported)"
    )
    bench.add_argument(
        "--profile-nonblocking",
        action="store_true",
        help="let py-spy sample the live server without pausing it (less overhead, torn stacks)",
    )
    bench.add_argument("--no-http", action="store_true", help="only the scorer table")
    bench.add_argument(
        "--shadow", action="store_true", help="also measure GridWatch with a challenger scoring in the shadow"
    )
    bench.add_argument(
        "--stream", action="store_true", help="also measure readings end to end through NATS and `gridwatch stream`"
    )
    bench.add_argument("--write", type=Path, help="also write the results as Markdown to this file")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    settings = _model_command_settings(args.model_dir, log_level="warning")
    from app.detector.loading import load_detector
    from app.tools.bench.render import print_bench, render_markdown
    from app.tools.bench.results import BenchConfig
    from app.tools.bench.run import run_bench

    detector = load_detector(settings.model_store(), train_if_missing=settings.train_if_missing, with_estimator=True)
    config = BenchConfig(
        sizes=tuple(args.sizes),
        min_seconds=args.min_seconds,
        http=not args.no_http,
        http_duration=args.http_duration,
        connections=args.connections,
        fixed_rps=args.fixed_rps,
        profile_requests=args.profile_requests,
        ready_starts=args.ready_starts,
        profile_nonblocking=args.profile_nonblocking,
        shadow=args.shadow,
        stream=args.stream,
    )
    result = run_bench(detector, config, settings.model_dir)
    if args.write:
        import shlex

        # The exact command, quoted as a shell needs it, when this process was started as `... bench ARGS`.
        command = shlex.join(["gridwatch", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "gridwatch bench"
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(render_markdown(result, command))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_bench(result)
    return 0


def _add_up(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser("up", help="start the local demo: API on :8000 and the Streamlit UI on :8501")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--ui-port", type=int, default=8501)
    up.add_argument("--host", default="127.0.0.1", help="interface both servers bind")
    up.add_argument(
        "--stream",
        action="store_true",
        help="also a local NATS server (JetStream, MQTT on port API-6117), the stream consumer (port API+1) and "
        "simulated feeders publishing over MQTT",
    )
    up.add_argument("--publish-seconds", type=float, default=600.0, help="with --stream: how long the feeders publish")
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    from app.tools.demo import run_demo

    return run_demo(
        host=args.host,
        api_port=args.api_port,
        ui_port=args.ui_port,
        stream=args.stream,
        publish_seconds=args.publish_seconds,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except _user_errors() as error:
        print(f"gridwatch {args.command}: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's or the environment's to fix: one line on stderr, not a traceback.

    Invalid settings (pydantic's ValidationError) belong here too, but pydantic is only a backend dependency and
    ``simulate`` must run without it.
    """
    from app.detector.errors import GridWatchError

    errors: tuple[type[BaseException], ...] = (GridWatchError, OSError, ValueError)
    try:
        from pydantic import ValidationError
    except ImportError:
        return errors
    return (*errors, ValidationError)


if __name__ == "__main__":
    raise SystemExit(main())
