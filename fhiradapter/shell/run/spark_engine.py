"""``evaluate --engine spark``: the same run on Apache Spark, for inputs one machine cannot take.

Nothing of the protocol is written twice. The plan:

1. **Read and map** on the executors with the local engine's code: local files are cut into the same
   line-aligned tasks (``readers.plan_tasks``) and read by ``steps.read_task``; an input Spark reads by URL
   (``hdfs://``, ``s3a://``, ...) is split by Spark (NDJSON, ``.gz`` included) or read whole (``.json``
   Bundles), then parsed by the same reader functions. Every line becomes an ``InputRecord`` or a reject.
   No record over ``--max-record-bytes`` is read: a plain NDJSON file by URL goes through Hadoop's line
   reader with that maximum, and the lines it skips are found from the offsets (``line_layout``).
2. **Study-wide resources** (Medication, ResearchStudy; few) are collected to the driver, settled with the
   same duplicate rule, and broadcast.
3. **Group by patient** (a record's key is its patient, or its own reference when it has none: as the local
   engine's buckets) and call ``steps.evaluate_group`` on each group: the duplicate rule, then
   ``evaluate_patient``, the one per-patient function both engines share. Its inputs and outputs pickle.
4. **The driver** receives each patient's typed result, write-back plan and extract, writes them through
   ``outputs.PatientParts`` and finishes with ``publish.publish_run``: the cohort statistics from one small
   row per patient, then every output file, written by the same code as the local engine's.

Copies of a resource are ordered by where they were read exactly as in the local engine (the task's place
in input order, then the line), so the "seen last" rule keeps the same copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import msgspec
import orjson

from fhiradapter.core.dedup import InputRecord, keep_newest
from fhiradapter.core.evaluate import CohortRow, EvaluationSettings
from fhiradapter.core.mappers import MapContext, Record
from fhiradapter.core.readback import RunRecord
from fhiradapter.core.results import CohortSummary, Population, ResultsHeader, TimedRunSummary, to_json
from fhiradapter.errors import ConfigError, InputError
from fhiradapter.shell.common.mappings_io import ucum_factor
from fhiradapter.shell.common.out_folder import SPILL_PREFIX
from fhiradapter.shell.common.urls import safe_url
from fhiradapter.shell.report.rows import encode_row, report_row
from fhiradapter.shell.run.engine import Evaluated, FoundInputs, PhaseClock, RunRequest, RunStats
from fhiradapter.shell.run.outputs import PartsIndex, PatientParts
from fhiradapter.shell.run.publish import publish_run
from fhiradapter.shell.run.readers import (
    NOT_DATA,
    PULL_MANIFEST,
    InputLimits,
    RawRecord,
    Reject,
    Task,
    is_data_file,
    is_plain,
    plan_tasks,
    read_document,
    read_lines,
    too_large,
)
from fhiradapter.shell.run.spill import RejectList, RejectsFile
from fhiradapter.shell.run.steps import (
    CHUNK_BYTES,
    GLOBAL_TYPES,
    PatientOutputs,
    evaluate_group,
    map_raw,
    read_task,
    reject_superseded,
    settle_globals,
    writeback_context,
)

if TYPE_CHECKING:  # pyspark is an optional extra, imported only when a run asks for Spark
    from pyspark import RDD, SparkContext
    from pyspark.broadcast import Broadcast

INSTALL_HINT = "--engine spark needs pyspark and Java 17 or newer: pip install 'fhiradapter[spark]'"
# A record's place in the input ("seen"), the last-seen tie-breaker of the duplicate rule: local tasks are
# numbered as in the local engine (task rank x 10^9 + record); files found under a URL come after them, each
# file a block of its own, each Spark partition of a file a block within it, in the order they are read.
FILE_BLOCK = 10**18
PARTITION_BLOCK = 10**12

# What an executor hands back: ("item", key, InputRecord) or, once per task, ("done", stats, rejects).
Tagged = tuple[str, Any, Any]
# A plain NDJSON file read by URL: (byte offset, line) pairs, Hadoop skipping a line over MAX_LINE bytes unread.
# The older API's reader: its offset is the line's own (the newer one gives where the lines it skipped began).
TEXT_FORMAT = (
    "org.apache.hadoop.mapred.TextInputFormat",
    "org.apache.hadoop.io.LongWritable",
    "org.apache.hadoop.io.Text",
)
MAX_LINE = "mapreduce.input.linerecordreader.line.maxlength"
MIN_SPLIT = "mapreduce.input.fileinputformat.split.minsize"
INPUT_DIR = "mapreduce.input.fileinputformat.inputdir"
SKIPPED = " (skipped unread by Spark's reader)"
SEVERAL = "; {} bytes were skipped there, perhaps several such lines in a row: they are one reject, one line"


def _newest_copy(group: tuple[str, Iterable[InputRecord]]) -> Iterator[Tagged]:
    """The copy of one resource that counts, keyed by its patient, and each superseded copy with the winner."""
    copies = list(group[1])
    for item, kept in keep_newest(copies):
        if kept is None:
            yield ("item", item.patient or item.ref, item)
        else:
            yield ("superseded", item, kept)


def _map_raw(raw: RawRecord | Reject, seq: int, ctx: MapContext, rejects: RejectList, stats: RunStats) -> Tagged | None:
    """One record read from a URL input, mapped as ``steps.read_task`` maps a local file's."""
    item = map_raw(raw, seq, ctx, rejects, stats)
    return None if item is None else ("item", item.patient or item.ref, item)


def _read_tasks(
    settings: EvaluationSettings, limits: InputLimits
) -> Callable[[Iterable[tuple[int, Task]]], Iterator[Tagged]]:
    def run(tasks: Iterable[tuple[int, Task]]) -> Iterator[Tagged]:
        ctx = MapContext(settings.mappings, ucum_factor, settings.local_bases)
        for rank, task in tasks:
            stats = RunStats()
            rejects = RejectList(limits.rejects_per_file or None, stats.unlisted)
            for item in read_task(rank, task, ctx, rejects, stats, None, limits.record_bytes):
                yield ("item", item.patient or item.ref, item)
            yield ("done", stats, rejects)

    return run


def _read_text(
    settings: EvaluationSettings, name: str, base: int, limits: InputLimits
) -> Callable[[int, Iterable[tuple[str, int]]], Iterator[Tagged]]:
    """A partition of an NDJSON file Spark split: its lines, numbered in the file by ``zipWithIndex``."""

    def run(partition: int, lines: Iterable[tuple[str, int]]) -> Iterator[Tagged]:
        ctx = MapContext(settings.mappings, ucum_factor, settings.local_bases)
        stats = RunStats()
        rejects = RejectList(limits.rejects_per_file or None, stats.unlisted)
        rows = list(lines)
        if rows:
            first = rows[0][1]
            encoded = [line.encode() for line, _n in rows]
            raws = read_lines(encoded, name, first_line=first + 1, max_record_bytes=limits.record_bytes)
            for n, raw in enumerate(raws):
                tagged = _map_raw(raw, base + partition * PARTITION_BLOCK + n, ctx, rejects, stats)
                if tagged is not None:
                    yield tagged
        yield ("done", stats, rejects)

    return run


def _read_text_bounded(
    settings: EvaluationSettings,
    name: str,
    base: int,
    limits: InputLimits,
    layout: LineLayout,
) -> Callable[[int, Iterable[tuple[int, str]]], Iterator[Tagged]]:
    """A partition of a plain NDJSON file read by URL: its (byte offset, line) pairs, Hadoop having skipped
    each line over the limit unread; each skipped line is a ``too-large`` reject, and every line keeps its
    number in the file (``layout``)."""
    limit = limits.record_bytes

    def skipped(line: int, size: int) -> Reject:
        several = size >= 2 * (limit + 3)  # room for more than one such line: Hadoop does not say how many
        return too_large(name, f"line {line}", limit, SKIPPED + (SEVERAL.format(size) if several else ""))

    def raws(partition: int, rows: Iterable[tuple[int, str]]) -> Iterator[RawRecord | Reject]:
        line, before = layout.starts.get(partition, (1, 0))
        if before:
            yield skipped(line - 1, before)
        batch: list[bytes] = []
        first, last = line, -1
        for offset, text in rows:
            if last >= 0 and offset - last > limit + 2:  # a line Hadoop skipped lies between
                yield from read_lines(batch, name, first, limit)
                yield skipped(line, offset - last - len(batch[-1]) - 1)
                line += 1
                batch, first = [], line
            batch.append(text.encode())
            line += 1
            last = offset
        yield from read_lines(batch, name, first, limit)
        if partition == layout.last_partition and layout.tail is not None:
            yield skipped(*layout.tail)

    def run(partition: int, rows: Iterable[tuple[int, str]]) -> Iterator[Tagged]:
        ctx = MapContext(settings.mappings, ucum_factor, settings.local_bases)
        stats = RunStats()
        rejects = RejectList(limits.rejects_per_file or None, stats.unlisted)
        for n, raw in enumerate(raws(partition, rows)):
            tagged = _map_raw(raw, base + partition * PARTITION_BLOCK + n, ctx, rejects, stats)
            if tagged is not None:
                yield tagged
        yield ("done", stats, rejects)

    return run


class LineLayout(NamedTuple):
    """Where the lines of a plain NDJSON file read by Spark fall: per partition, the number of its first line
    and the bytes skipped just before it (lines over the limit; 0: none); the number and bytes of skipped last
    lines; and how many places lines were skipped at."""

    starts: dict[int, tuple[int, int]]
    last_partition: int
    tail: tuple[int, int] | None
    skips: int


def _bounded_lines(sc: SparkContext, name: str, size: int, limit: int) -> tuple[RDD[tuple[int, str]], LineLayout]:
    """A plain NDJSON file by URL as (offset, line) pairs, no line over ``limit`` held by the JVM, and where
    its lines fall.

    Hadoop skips a line over the limit whole only when the line does not cross the end of a split (it stops
    inside one that does, and what follows would be read as a line): so a file where a line was skipped is
    read again as one split, and then every line it skips is skipped whole.
    """
    # hadoopRDD, not hadoopFile: PySpark's hadoopFile leaves out the configuration given to it.
    conf = {MAX_LINE: str(limit + 3), INPUT_DIR: name.replace(",", "\\,")}
    while True:
        pairs: RDD[tuple[int, str]] = sc.hadoopRDD(*TEXT_FORMAT, conf=conf)
        layout = line_layout(pairs.mapPartitionsWithIndex(_partition_layout(limit)).collect(), size, limit)
        if not layout.skips or MIN_SPLIT in conf or pairs.getNumPartitions() == 1:
            return pairs, layout
        conf[MIN_SPLIT] = str(1 << 62)


def _partition_layout(limit: int) -> Callable[[int, Iterable[tuple[int, str]]], Iterator[tuple[int, ...]]]:
    """(partition, lines, first offset, last offset, last line's end, lines skipped inside) of each partition."""

    def run(partition: int, rows: Iterable[tuple[int, str]]) -> Iterator[tuple[int, ...]]:
        count = inside = 0
        first = last = end = -1
        for offset, text in rows:
            if count and offset - last > limit + 2:
                inside += 1
            if not count:
                first = offset
            last = offset
            end = offset + len(text.encode()) + 1
            count += 1
        yield (partition, count, first, last, end, inside)

    return run


def line_layout(partitions: list[tuple[int, ...]], size: int, limit: int) -> LineLayout:
    """Number the lines of a plain NDJSON file from its partitions' layout (``_partition_layout``).

    Hadoop skips a line of ``limit`` + 3 bytes or more (newline included) and keeps any shorter one, so two
    lines it kept one after the other start at most ``limit`` + 2 bytes apart: a larger step between offsets,
    a first line that does not start at 0, or a last one ending more than that before the end of the file,
    means a line was skipped there.
    """
    starts: dict[int, tuple[int, int]] = {}
    line, last, end, skips = 1, -1, 0, 0
    for partition, count, first, final, final_end, inside in sorted(partitions):
        if not count:
            starts[partition] = (line, 0)
            continue
        before = first > 0 if last < 0 else first - last > limit + 2
        line += before
        starts[partition] = (line, first - end if before else 0)
        line += count + inside
        skips += before + inside
        last, end = final, final_end
    tail = size > 0 if last < 0 else size - last > limit + 2
    return LineLayout(starts, max(starts, default=0), (line, size - end) if tail else None, skips + tail)


def _read_whole(
    settings: EvaluationSettings, name: str, base: int, limits: InputLimits
) -> Callable[[Iterable[bytes]], Iterator[Tagged]]:
    """A whole JSON file (a Bundle) found under a URL input (no larger than the limit: see ``_run``)."""

    def run(files: Iterable[bytes]) -> Iterator[Tagged]:
        ctx = MapContext(settings.mappings, ucum_factor, settings.local_bases)
        stats = RunStats()
        rejects = RejectList(limits.rejects_per_file or None, stats.unlisted)
        for data in files:
            for n, raw in enumerate(read_document(data, name, limits.record_bytes)):
                tagged = _map_raw(raw, base + n, ctx, rejects, stats)
                if tagged is not None:
                    yield tagged
        yield ("done", stats, rejects)

    return run


def _pulled_from(sc: SparkContext, listed: Reject) -> str | None:
    """The server a pull folder found under a URL was pulled from (its pull-manifest.json), if it says."""
    if not listed.file.endswith("/" + PULL_MANIFEST):
        return None
    try:
        manifest = orjson.loads("".join(sc.textFile(listed.file).collect()))
    except Exception:  # noqa: BLE001 - unreadable (any cause): the references stay foreign
        return None
    server = manifest.get("server") if isinstance(manifest, dict) else None
    return server if isinstance(server, str) else None


def _hadoop_path(sc: SparkContext, url: str) -> tuple[Any, Any]:
    """Hadoop's FileSystem for ``url`` and its Path: py4j proxies of JVM objects, untyped on this side."""
    jvm = sc._jvm
    if jvm is None:  # pragma: no cover - a SparkContext that is running has its gateway
        raise ConfigError("Spark's JVM is not running")
    path = jvm.org.apache.hadoop.fs.Path(url)
    return path.getFileSystem(sc._jsc.hadoopConfiguration()), path


def _exists(sc: SparkContext, url: str) -> bool:
    fs, path = _hadoop_path(sc, url)
    return bool(fs.exists(path))


def list_url(sc: SparkContext, url: str) -> tuple[list[tuple[str, int]], list[Reject]]:
    """The data files under ``url`` (a file, a folder walked recursively, or a glob) with their sizes, through
    Spark's own file systems; and the files there that are not read, as ``not-read`` rejects (the local
    reader's rules: by name)."""
    fs, path = _hadoop_path(sc, url)
    matches = fs.globStatus(path)
    if matches is None or len(matches) == 0:
        raise InputError(f"input not found: {url}")
    files: list[tuple[str, int]] = []
    for status in matches:
        if status.isDirectory():
            found = fs.listFiles(status.getPath(), True)
            while found.hasNext():
                item = found.next()
                files.append((str(item.getPath().toString()), int(item.getLen())))
        else:
            files.append((str(status.getPath().toString()), int(status.getLen())))
    # Hadoop writes a local path as file:/x; shown (and read) as the file:///x a user gives.
    files = sorted(
        (f"file://{n[5:]}" if n.startswith("file:/") and not n.startswith("file://") else n, s) for n, s in files
    )
    data, skipped = [], []
    for name, size in files:
        base = name.rsplit("/", 1)[-1]
        if base in NOT_DATA:
            why = "written by fhiradapter pull beside the data: a description of the pull, not data"
            skipped.append(Reject(name, "file", None, None, "not-read", why))
        elif base.startswith(("_", ".")):  # Hadoop's and Spark's own markers (_SUCCESS, .crc files)
            continue
        elif is_data_file(Path(base)):
            data.append((name, size))
        else:
            why = "not a FHIR data file by its name (read are .ndjson, .jsonl and .json, optionally compressed)"
            skipped.append(Reject(name, "file", None, None, "not-read", why))
    return data, skipped


def _evaluate_groups(
    settings: EvaluationSettings,
    medications: Broadcast[dict[str, Record | None]],
    writeback: bool,
    enrol: bool,
    cap: int | None,
) -> Callable[[Iterable[tuple[str, Iterable[InputRecord]]]], Iterator[Tagged]]:
    """Each patient's records through ``steps.evaluate_group`` (the local engine's per-patient step)."""

    def run(groups: Iterable[tuple[str, Iterable[InputRecord]]]) -> Iterator[Tagged]:
        stats = RunStats()
        rejects = RejectList(cap, stats.unlisted)
        wctx = writeback_context(settings, writeback)
        meds: dict[str, Record | None] = medications.value
        for _key, items in groups:
            for evaluated in evaluate_group(list(items), settings, meds, rejects, stats, wctx, enrol):
                yield ("patient", evaluated, None)
        yield ("done", stats, rejects)

    return run


@dataclasses.dataclass(frozen=True)
class SparkEngine:
    """The run on a Spark session at ``master`` (``local[*]``, ``spark://host:7077``, ``yarn``, ...; None: the one
    ``spark-submit`` set, else ``local[*]``)."""

    master: str | None = None
    name: ClassVar[str] = "spark"

    def run(self, request: RunRequest, found: FoundInputs, settings: EvaluationSettings) -> TimedRunSummary:
        """The run in ``request.out``, which ``run_evaluate`` holds (locked)."""
        return run_spark(request, found, settings, self.master)


def run_spark(run: RunRequest, found: FoundInputs, settings: EvaluationSettings, master: str | None) -> TimedRunSummary:
    """Start (or join) the Spark session, run, and stop a session started here; a JVM lost is said in one line."""
    try:
        from pyspark import SparkConf  # noqa: PLC0415 - an optional extra
        from pyspark.sql import SparkSession  # noqa: PLC0415
    except ModuleNotFoundError:
        raise ConfigError(INSTALL_HINT) from None
    if master is None:
        try:
            master = str(SparkConf().get("spark.master", "local[*]"))  # spark-submit passes it as a property
        except Exception as exc:  # noqa: BLE001 - no Java: one line, not a JVM trace
            raise ConfigError(f"cannot start Spark: {type(exc).__name__}: {str(exc)[:200]} ({INSTALL_HINT})") from None
    clock = PhaseClock()

    # A session already running in this process (spark-submit, a notebook, the tests) is used as it is, and
    # left running; one started here is stopped at the end.
    ours = SparkSession.getActiveSession() is None
    builder = SparkSession.builder.appName("fhiradapter evaluate").master(master)
    if master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # Executors on this machine run this interpreter, which has fhiradapter (not whatever python3 is first
        # on PATH). On a cluster, the executors' Python is the cluster's (docs/spark.md).
        os.environ["PYSPARK_PYTHON"] = sys.executable
    try:
        show = "true" if run.progress is not None else "false"  # Spark's own stage bars, when a display is wanted
        spark = builder.config("spark.ui.showConsoleProgress", show).getOrCreate()
    except Exception as exc:  # noqa: BLE001 - no JVM, a cluster that cannot be reached: say so in one line
        raise ConfigError(f"cannot start Spark at {master}: {type(exc).__name__}: {str(exc)[:200]}") from None
    sc = spark.sparkContext
    # An executor's failure is logged with its Python traceback, whose message may quote a record: nothing is
    # logged unless FHIRADAPTER_DEBUG asks (the error still stops the run, with its type only).
    sc.setLogLevel("ERROR" if os.environ.get("FHIRADAPTER_DEBUG") else "OFF")
    if run.results_dir and _exists(sc, run.results_dir):
        if ours:
            spark.stop()
        raise ConfigError(
            f"--results-dir {safe_url(run.results_dir)} exists already: give a new folder (a run never mixes "
            "its results with another's)"
        )
    from py4j.protocol import Py4JJavaError, Py4JNetworkError  # noqa: PLC0415 - comes with pyspark

    try:
        with tempfile.TemporaryDirectory(dir=run.out, prefix=SPILL_PREFIX) as spill_dir:  # mode 700
            return _run(spark.sparkContext, run, found, settings, Path(spill_dir), clock)
    except (ConnectionError, Py4JNetworkError) as exc:  # the JVM is gone: not a fault of --out
        raise InputError(jvm_lost(run, found, type(exc).__name__)) from None
    except Py4JJavaError as exc:
        if "OutOfMemoryError" not in str(exc):  # looked for, never shown: a Java message may quote a record
            raise
        raise InputError(jvm_lost(run, found, "OutOfMemoryError")) from None
    finally:
        if ours:
            with contextlib.suppress(Exception):  # a JVM that died cannot be stopped: the cause is said above
                spark.stop()


def jvm_lost(run: RunRequest, found: FoundInputs, what: str) -> str:
    """Why a run stopped when Spark's JVM died or ran out of memory: most likely a record of the input."""
    inputs = [safe_url(u) for u in run.urls] or [str(f) for f in found.files]
    named = ", ".join(inputs[:5]) + (f" and {len(inputs) - 5} more" if len(inputs) > 5 else "")
    return (
        f"Spark stopped while reading the input ({what}: its JVM died or ran out of memory), most likely on a "
        f"record too large for its memory in {named or 'the input'}. Lines over --max-record-bytes "
        f"({run.limits.record_bytes} bytes) are refused unread in plain files, but a line of a compressed file "
        "read by URL reaches Spark whole: look for such a line, or give Spark more memory (spark.driver.memory, "
        "spark.executor.memory)"
    )


class SparkInput(NamedTuple):
    """What the executors read: one RDD of tagged records per local task share or file found under a URL; the
    files found under URLs (name, size); the files not read (``not-read``, ``too-large`` unread); and the settings,
    with the servers of pull folders found under URLs among the local bases."""

    parts: list[RDD[Tagged]]
    url_files: list[tuple[str, int]]
    unread: list[Reject]
    settings: EvaluationSettings


def _run(
    sc: SparkContext,
    run: RunRequest,
    found: FoundInputs,
    settings: EvaluationSettings,
    spill: Path,
    clock: PhaseClock,
) -> TimedRunSummary:
    """Read and map on the executors, settle the study-wide resources and duplicates on the driver, evaluate each
    patient on the executors, and publish (or write the results to ``--results-dir``)."""
    read = _read_inputs(sc, run, found, settings)
    mapped = sc.union(read.parts).persist()
    input_bytes = sum(f.stat().st_size for f in found.files) + sum(size for _name, size in read.url_files)
    stats = RunStats(files=len(found.files) + len(read.url_files), input_bytes=input_bytes)
    read_rejects = RejectsFile(spill / "rejects-read.ndjson", run.reject_cap, stats.unlisted)
    try:
        medications, resolved = _settle_read(mapped, read.unread, read_rejects, stats)
    finally:
        read_rejects.close()
    settings = read.settings.with_study_from_data(medications.values())
    reject_files = [read_rejects.path]
    clock.lap("read_and_map")
    by_patient = resolved.filter(lambda t: t[0] == "item").map(lambda t: (t[1], t[2])).groupByKey()
    shared = sc.broadcast(medications)
    evaluated = by_patient.mapPartitions(
        _evaluate_groups(settings, shared, run.writeback, run.enrol_candidates, run.reject_cap)
    )
    try:
        if run.results_dir:
            return _to_results_dir(sc, run, found, settings, spill, evaluated, stats, reject_files, clock)
        rows, index = _collect_patients(evaluated, spill, run.reject_cap, stats, reject_files)
    finally:
        resolved.unpersist()
        mapped.unpersist()
    clock.lap("evaluate")
    done = Evaluated(stats, rows, reject_files, [index], sc.defaultParallelism, {})
    return publish_run(run, found, settings, spill, done, clock)


def _read_inputs(sc: SparkContext, run: RunRequest, found: FoundInputs, settings: EvaluationSettings) -> SparkInput:
    """The local files, cut into the local engine's tasks, and each file found under a URL, each as an RDD of
    tagged records; a plain JSON file larger than a record is refused unread (Spark would read it whole)."""
    try:
        tasks = plan_tasks(found.files, CHUNK_BYTES)
    except OSError as exc:
        raise InputError(f"input unreadable: {exc.filename}: {exc.strerror}") from None
    parts: list[RDD[Tagged]] = []
    if tasks:
        parts.append(
            sc.parallelize(list(enumerate(tasks)), len(tasks)).mapPartitions(_read_tasks(settings, run.limits))
        )
    url_files, unread = [], list(found.unread)
    for url in run.urls:
        files_found, skipped = list_url(sc, url)
        url_files += files_found
        unread += skipped
    servers = [server for r in unread if (server := _pulled_from(sc, r))]
    if servers:  # a pull folder read by URL: its server's absolute references are its own, as for a local one
        bases = tuple(dict.fromkeys([*settings.local_bases, *servers]))
        settings = dataclasses.replace(settings, local_bases=bases)
    first_block = (len(tasks) + 1) * 10**9
    limits = run.limits
    for n, (name, size) in enumerate(url_files):
        base = first_block + n * FILE_BLOCK
        plain = is_plain(Path(name))
        if plain and name.lower().endswith(".json"):
            if size > limits.record_bytes:  # read whole by Spark: refused unread
                unread.append(too_large(name, "file", limits.record_bytes))
                continue
            parts.append(sc.binaryFiles(name).values().mapPartitions(_read_whole(settings, name, base, limits)))
        elif plain:  # NDJSON: Hadoop skips a line over the limit without holding it; the gap it leaves is found
            pairs, layout = _bounded_lines(sc, name, size, limits.record_bytes)
            parts.append(pairs.mapPartitionsWithIndex(_read_text_bounded(settings, name, base, limits, layout)))
        else:  # compressed NDJSON (Spark's codecs: .gz, .bz2, ...): a line over the limit is refused by Python
            lines = sc.textFile(name).zipWithIndex()
            parts.append(lines.mapPartitionsWithIndex(_read_text(settings, name, base, limits)))
    if not parts:
        raise InputError("nothing to read: no input file")
    return SparkInput(parts, url_files, unread, settings)


def _settle_read(
    mapped: RDD[Tagged], unread: list[Reject], read_rejects: RejectsFile, stats: RunStats
) -> tuple[dict[str, Record | None], RDD[Tagged]]:
    """On the driver: each task's counts and rejects, the study-wide resources settled (the medications by
    reference), and the duplicate rule by reference, before grouping by patient: copies of one resource that
    name different patients (a record moved to another patient) meet here, whatever their patient. Returns
    the medications and the records that count (``("item", patient, record)``), persisted."""
    for _tag, task_stats, rejects in mapped.filter(lambda t: t[0] == "done").toLocalIterator():
        stats.merge(task_stats)
        for entry in rejects:
            read_rejects.reject(entry)
    study_wide = mapped.filter(lambda t: t[0] == "item" and t[2].ref.split("/", 1)[0] in GLOBAL_TYPES)
    medications = settle_globals([t[2] for t in study_wide.collect()], unread, read_rejects, stats)
    records = mapped.filter(lambda t: t[0] == "item" and t[2].ref.split("/", 1)[0] not in GLOBAL_TYPES)
    resolved = records.map(lambda t: (t[2].ref, t[2])).groupByKey().flatMap(_newest_copy).persist()
    superseded = resolved.filter(lambda t: t[0] == "superseded").map(lambda t: (t[1], t[2]))
    for older, kept in superseded.toLocalIterator():
        reject_superseded(older, kept, read_rejects, stats)
    return medications, resolved


def _collect_patients(
    evaluated: RDD[Tagged], spill: Path, cap: int | None, stats: RunStats, reject_files: list[Path]
) -> tuple[list[CohortRow], PartsIndex]:
    """On the driver, in turn: each patient's result, plan and extract into the parts the outputs are joined
    from, one cohort row per study subject, and each partition's counts and rejects."""
    rows: list[CohortRow] = []
    patient_parts = PatientParts(spill, "spark")
    eval_rejects = RejectsFile(spill / "rejects-evaluate.ndjson", cap, stats.unlisted)
    try:
        for tag, payload, rejects in evaluated.toLocalIterator():
            if tag == "done":
                stats.merge(payload)
                for entry in rejects:
                    eval_rejects.reject(entry)
                continue
            result, row, plan, extract = payload
            patient_parts.add(result, plan, extract)
            if result.population != Population.CANDIDATE:
                rows.append(row)
    finally:
        try:
            eval_rejects.close()
        finally:
            index = patient_parts.close()
    reject_files.append(eval_rejects.path)
    stats.plan.update(index.actions)
    return rows, index


def _to_results_dir(
    sc: SparkContext,
    run: RunRequest,
    found: FoundInputs,
    settings: EvaluationSettings,
    spill: Path,
    evaluated: RDD[Tagged],
    stats: RunStats,
    reject_files: list[Path],
    clock: PhaseClock,
) -> TimedRunSummary:
    """``--results-dir``: the per-patient results written by Spark, in patient order, as partitioned NDJSON.

    ``URL/subjects/part-*`` holds results.json's subjects (one per line), ``URL/clinical/part-*`` the clinical
    extract, ``URL/candidates/part-*`` screening candidates (with --screen-candidates), and ``URL/run/part-00000``
    the run's header and cohort summary, written last; each folder ends with Spark's ``_SUCCESS``. The driver
    holds one small row per patient (the cohort statistics, the report) and writes the rest of ``--out``.
    ``fhiradapter export`` reads such a folder as it reads an evaluate folder.
    """
    url = run.results_dir.rstrip("/")
    evaluated.persist()
    try:
        done = evaluated.filter(lambda t: t[0] == "done").map(lambda t: (t[1], t[2])).toLocalIterator()
        eval_rejects = RejectsFile(spill / "rejects-evaluate.ndjson", run.reject_cap, stats.unlisted)
        try:
            for task_stats, rejects in done:
                stats.merge(task_stats)
                for entry in rejects:
                    eval_rejects.reject(entry)
        finally:
            eval_rejects.close()
        reject_files.append(eval_rejects.path)
        patients = evaluated.filter(lambda t: t[0] == "patient").map(lambda t: (t[1][0].patient, t[1]))
        ordered: RDD[tuple[str, PatientOutputs]] = patients.sortByKey().persist()
        subjects = ordered.filter(lambda kv: kv[1][0].population != Population.CANDIDATE)
        subjects.map(lambda kv: to_json(kv[1][0]).decode()).saveAsTextFile(f"{url}/subjects")
        subjects.map(lambda kv: msgspec.json.encode(kv[1][3]).decode()).saveAsTextFile(f"{url}/clinical")
        if run.screen_candidates:
            candidates = ordered.filter(lambda kv: kv[1][0].population == Population.CANDIDATE)
            candidates.map(lambda kv: to_json(kv[1][0]).decode()).saveAsTextFile(f"{url}/candidates")
        small = subjects.map(lambda kv: (kv[1][1], encode_row(report_row(kv[1][0])))).collect()
        lines = {"subjects": len(small), "clinical": len(small)}
        if run.screen_candidates:
            lines["candidates"] = candidates.count()
        ordered.unpersist()
    finally:
        evaluated.unpersist()
    clock.lap("evaluate")
    rows = [row for row, _report in small]
    report_rows = spill / "report-rows-spark.ndjson"
    report_rows.write_bytes(b"".join(line + b"\n" for _row, line in small))
    evaluated_run = Evaluated(
        stats, rows, reject_files, [PartsIndex(report_rows=report_rows)], sc.defaultParallelism, {}
    )

    def write_run(header: ResultsHeader, cohort: CohortSummary) -> None:
        line = to_json(RunRecord(header, cohort, lines)).decode()
        sc.parallelize([line], 1).saveAsTextFile(f"{url}/run")

    return publish_run(run, found, settings, spill, evaluated_run, clock, write_run)
