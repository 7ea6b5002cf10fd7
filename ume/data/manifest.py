"""Dataset manifests: Kaldi data dirs, WeNet-style jsonl ``data.list`` files, and audio loading.

Two layouts are accepted by :func:`load_manifest`:

* a Kaldi data directory with ``wav.scp`` and ``text`` (optional ``utt2spk``, ``utt2lang``,
  ``utt2dur``); ``wav.scp`` entries are file paths or Kaldi pipes (``sox a.flac -t wav - |``).
  A pipe entry is a shell command run as you (``sh -c``): a wav.scp is code, read only ones you
  trust. Each command gets ``UME_PIPE_TIMEOUT`` seconds (default 300); one that hangs is killed
  (with its children) and its utterance skipped and counted like any unreadable audio;
* a jsonl file (one ``{"key": ..., "wav": ..., "txt": ...}`` object per line), or a directory
  that holds such a ``data.list`` and no ``wav.scp``.

Problems confined to one utterance (audio file missing, empty text, key without a transcript,
duplicate key) skip that utterance and are reported; a malformed file raises :class:`DataError`
naming ``file:line`` and what to fix.

Example:
    >>> utts, skipped = load_manifest("data/train")
    >>> utts[0]
    Utterance(key='utt1', wav='/data/utt1.wav', text='你好WORLD', lang='mix', spk='', duration=None)
    >>> wave = load_audio(utts[0].wav)  # (N,) float32 at 16 kHz
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ume.atomic import atomic_write_text
from ume.data.text import normalize_text, text_lang
from ume.errors import UmeError

logger = logging.getLogger(__name__)

LANGS = ("zh", "en", "mix")
PIPE_TIMEOUT_ENV = "UME_PIPE_TIMEOUT"
DEFAULT_PIPE_TIMEOUT = 300.0  # seconds for one wav.scp pipe command


class DataError(UmeError):
    """A data file or audio file is missing or malformed; the message says where and how to fix."""


@dataclass
class Utterance:
    """One utterance. ``lang`` is 'zh', 'en' or 'mix' ('' when unknown: no text, no utt2lang)."""

    key: str
    wav: str
    text: str
    lang: str
    spk: str = ""
    duration: float | None = None


# ---------------------------------------------------------------------------------------------
# reading helpers


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline) for the non-blank lines of a UTF-8 file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    for lineno, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                "re-encode the file as UTF-8"
            ) from e
        line = line.strip().lstrip("\ufeff")
        if line:
            yield lineno, line


def _read_kv(path: Path, *, allow_empty_value: bool) -> dict[str, tuple[str, int]]:
    """Read 'key value' lines → {key: (value, lineno)}. Duplicate keys raise DataError."""
    out: dict[str, tuple[str, int]] = {}
    for lineno, line in _read_lines(path):
        parts = line.split(maxsplit=1)
        key = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if not value and not allow_empty_value:
            raise DataError(
                f"{path}:{lineno}: expected '<key> <value>' but found only {key!r}; "
                "add the missing value or delete the line"
            )
        if key in out:
            raise DataError(
                f"{path}:{lineno}: duplicate key {key!r} (first on line {out[key][1]}); "
                "keys must be unique"
            )
        out[key] = (value, lineno)
    return out


def _resolve_wav(wav: str, base: Path) -> str | None:
    """Existing path for `wav` (as given, or relative to `base`); pipes pass through; None if missing."""
    if wav.endswith("|"):
        return wav
    p = Path(wav)
    if p.is_file():
        return wav
    if not p.is_absolute() and (base / p).is_file():
        return str(base / p)
    return None


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aiff", ".aif", ".au", ".webm")


def audio_format(path: Path) -> str | None:
    """The audio container a file's first bytes announce ('WAV', 'FLAC', 'Ogg', 'MP3', 'AIFF',
    'MP4', 'AU', 'WebM'), or None for anything else (e.g. a text manifest)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[:4] in (b"RIFF", b"RF64") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "Ogg"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[4:8] == b"ftyp":
        return "MP4"
    if head[:4] == b".snd":
        return "AU"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "WebM"
    return None


# ---------------------------------------------------------------------------------------------
# manifests


def load_manifest(
    path: str | Path, *, require_text: bool = True
) -> tuple[list[Utterance], list[str]]:
    """Load a Kaldi data dir or a jsonl data.list; returns (utterances, skipped messages).

    Text is normalised with ``normalize_text``; ``lang`` comes from ``utt2lang`` (Kaldi) / a
    ``"lang"`` field (jsonl), else from ``text_lang(text)``. With ``require_text=False``
    (decoding without references) a missing ``text`` file or transcript gives ``text=''``.

    Example:
        >>> utts, skipped = load_manifest("data/dev")          # Kaldi dir
        >>> utts, skipped = load_manifest("data/dev/data.list")  # jsonl
        >>> for msg in skipped: print(msg)
    """
    path = Path(path)
    if path.is_dir():
        if (path / "wav.scp").is_file():
            utts, skipped = _load_kaldi(path, require_text)
        elif (path / "data.list").is_file():
            path = path / "data.list"
            utts, skipped = _load_jsonl(path, require_text)
        else:
            audio = sorted(p.name for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
            hint = (
                f"; it holds audio files ({', '.join(audio[:3])}{', ...' if len(audio) > 3 else ''})"
                f": to get their text run `ume transcribe {path}/*{Path(audio[0]).suffix}`"
                if audio
                else ""
            )
            raise DataError(
                f"{path} is a directory without wav.scp or data.list; a Kaldi data dir needs "
                "wav.scp and text, a jsonl manifest needs data.list" + hint
            )
    elif path.is_file():
        kind = audio_format(path)
        if kind is not None:
            raise DataError(
                f"{path} is an audio file ({kind}), not a manifest: this command reads a Kaldi "
                "data dir (wav.scp + text) or a jsonl data.list naming audio files. To get the "
                f"text of this file run `ume transcribe {path}`"
            )
        if path.name == "wav.scp":
            path = path.parent
            utts, skipped = _load_kaldi(path, require_text)
        else:
            utts, skipped = _load_jsonl(path, require_text)
    else:
        raise DataError(f"manifest {path} does not exist (expected a Kaldi dir or a jsonl file)")

    if skipped:
        logger.warning(
            "%s: skipped %d utterance(s), kept %d; first: %s",
            path,
            len(skipped),
            len(utts),
            skipped[0],
        )
    if not utts:
        shown = "\n  ".join(skipped[:5]) or "(the manifest is empty)"
        raise DataError(f"{path}: no usable utterances. First problems:\n  {shown}")
    return utts, skipped


def _load_kaldi(d: Path, require_text: bool) -> tuple[list[Utterance], list[str]]:
    skipped: list[str] = []
    wav_scp = d / "wav.scp"
    text_path = d / "text"
    if not wav_scp.is_file():
        raise DataError(f"{d}: missing wav.scp (lines '<utt-id> <wav path or cmd |>')")

    # wav.scp: duplicates are per-utterance problems (skip the later line)
    wavs: dict[str, tuple[str, int]] = {}
    for lineno, line in _read_lines(wav_scp):
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            raise DataError(
                f"{wav_scp}:{lineno}: expected '<utt-id> <wav path>' but found only {parts[0]!r}"
            )
        key, wav = parts[0], parts[1].strip()
        if key in wavs:
            skipped.append(
                f"{key}: duplicate key in {wav_scp}:{lineno} (first on line {wavs[key][1]}); "
                "later entry ignored"
            )
            continue
        wavs[key] = (wav, lineno)

    texts: dict[str, tuple[str, int]] = {}
    if text_path.is_file():
        for lineno, line in _read_lines(text_path):
            parts = line.split(maxsplit=1)
            key = parts[0]
            if key in texts:
                skipped.append(
                    f"{key}: duplicate key in {text_path}:{lineno} "
                    f"(first on line {texts[key][1]}); later entry ignored"
                )
                continue
            texts[key] = (parts[1] if len(parts) > 1 else "", lineno)
    elif require_text:
        raise DataError(f"{d}: missing text file (lines '<utt-id> <transcript>')")

    spk = _read_kv(d / "utt2spk", allow_empty_value=False) if (d / "utt2spk").is_file() else {}
    langs = _read_kv(d / "utt2lang", allow_empty_value=False) if (d / "utt2lang").is_file() else {}
    durs = _read_kv(d / "utt2dur", allow_empty_value=False) if (d / "utt2dur").is_file() else {}
    for key, (lang, lineno) in langs.items():
        if lang not in LANGS:
            raise DataError(
                f"{d / 'utt2lang'}:{lineno}: language {lang!r} for {key!r} must be one of {LANGS}"
            )
    for key, (dur, lineno) in durs.items():
        try:
            float(dur)
        except ValueError:
            raise DataError(
                f"{d / 'utt2dur'}:{lineno}: duration {dur!r} for {key!r} is not a number"
            ) from None

    utts: list[Utterance] = []
    for key, (wav, lineno) in wavs.items():
        where = f"{wav_scp}:{lineno}"
        if key in texts:
            raw, tline = texts[key]
            text = normalize_text(raw)
            if not text and require_text:
                skipped.append(
                    f"{key}: empty text after normalisation ({text_path}:{tline}: {raw!r})"
                )
                continue
        elif require_text:
            skipped.append(f"{key}: in {where} but has no line in {text_path}")
            continue
        else:
            text = ""
        resolved = _resolve_wav(wav, d)
        if resolved is None:
            skipped.append(f"{key}: audio file {wav} not found ({where})")
            continue
        lang = langs[key][0] if key in langs else (text_lang(text) if text else "")
        utts.append(
            Utterance(
                key=key,
                wav=resolved,
                text=text,
                lang=lang,
                spk=spk[key][0] if key in spk else "",
                duration=float(durs[key][0]) if key in durs else None,
            )
        )
    for key, (_, tline) in texts.items():
        if key not in wavs:
            skipped.append(f"{key}: in {text_path}:{tline} but has no line in {wav_scp}")
    return utts, skipped


def _load_jsonl(path: Path, require_text: bool) -> tuple[list[Utterance], list[str]]:
    skipped: list[str] = []
    seen: dict[str, int] = {}
    utts: list[Utterance] = []
    base = path.parent
    for lineno, line in _read_lines(path):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be "
                'an object like {"key": "utt1", "wav": "/path/utt1.wav", "txt": "..."}'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [f for f in ("key", "wav") if not isinstance(obj.get(f), str) or not obj[f]]
        if missing:
            raise DataError(f"{where}: missing or non-string field(s) {missing}")
        key, wav = obj["key"], obj["wav"]
        raw = obj.get("txt", obj.get("text"))
        if raw is None and require_text:
            raise DataError(f'{where}: utterance {key!r} has no "txt" field')
        if raw is not None and not isinstance(raw, str):
            raise DataError(f'{where}: "txt" of {key!r} must be a string, got {raw!r}')
        if key in seen:
            skipped.append(
                f"{key}: duplicate key in {where} (first on line {seen[key]}); later entry ignored"
            )
            continue
        seen[key] = lineno
        text = normalize_text(raw or "")
        if not text and require_text:
            skipped.append(f"{key}: empty text after normalisation ({where}: {raw!r})")
            continue
        resolved = _resolve_wav(wav, base)
        if resolved is None:
            skipped.append(f"{key}: audio file {wav} not found ({where})")
            continue
        lang = obj.get("lang") or (text_lang(text) if text else "")
        if lang and lang not in LANGS:
            raise DataError(f"{where}: language {lang!r} for {key!r} must be one of {LANGS}")
        dur = obj.get("duration")
        if dur is not None and (isinstance(dur, bool) or not isinstance(dur, int | float)):
            raise DataError(f"{where}: duration {dur!r} for {key!r} is not a number")
        utts.append(
            Utterance(
                key=key,
                wav=resolved,
                text=text,
                lang=lang,
                spk=str(obj.get("spk", "")),
                duration=float(dur) if dur is not None else None,
            )
        )
    return utts, skipped


# ---------------------------------------------------------------------------------------------
# audio


def pipe_timeout() -> float:
    """Seconds a wav.scp pipe command may run: $UME_PIPE_TIMEOUT, default 300."""
    raw = os.environ.get(PIPE_TIMEOUT_ENV, "")
    if not raw.strip():
        return DEFAULT_PIPE_TIMEOUT
    try:
        t = float(raw)
    except ValueError:
        t = -1.0
    if not t > 0:
        raise DataError(f"{PIPE_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return t


def run_pipe(cmd: str, timeout: float | None = None) -> bytes:
    """stdout of the shell command `cmd` (a wav.scp pipe entry without its '|').

    The command runs in its own process group; after `timeout` seconds (default
    :func:`pipe_timeout`) the whole group is killed (a shell's children too, which would
    otherwise keep the pipe open) and DataError names the command and the limit.
    """
    timeout = pipe_timeout() if timeout is None else timeout
    try:
        proc = subprocess.Popen(
            cmd,
            shell=True,  # a wav.scp is code: pipes are shell commands by Kaldi convention
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        raise DataError(f"audio command {cmd!r} could not be started: {e}") from e
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:  # already gone
            pass
        proc.communicate()
        raise DataError(
            f"audio command {cmd!r} timed out after {timeout:g} s and was killed; fix the "
            f"command or raise {PIPE_TIMEOUT_ENV}"
        ) from None
    if proc.returncode != 0:
        msg = err.decode("utf-8", "replace").strip()[-500:]
        raise DataError(f"audio command {cmd!r} failed with exit code {proc.returncode}: {msg}")
    return out


def load_audio(path_or_cmd: str, target_sr: int = 16000) -> np.ndarray:
    """Read audio as float32 mono at `target_sr`: returns (N,) in [-1, 1] for PCM input.

    `path_or_cmd` is a file soundfile can read (WAV, FLAC, OGG, ...) or a Kaldi pipe
    ``"cmd args |"`` whose stdout is a WAV file (run with a timeout, see :func:`run_pipe`).
    Multi-channel audio is averaged to mono; other sample rates are resampled with soxr.

    Example:
        >>> wave = load_audio("a.flac")                       # (N,)
        >>> wave = load_audio("sox a.mp3 -t wav -r 16000 - |")
    """
    src = path_or_cmd.strip()
    if src.endswith("|"):
        cmd = src[:-1].strip()
        source: str | io.BytesIO = io.BytesIO(run_pipe(cmd))
        name = f"output of {cmd!r}"
    else:
        if not os.path.isfile(src):
            raise DataError(f"audio file {src} not found")
        source, name = src, src
    try:
        data, sr = sf.read(source, dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise DataError(
            f"cannot read audio {name}: {e}. Is it a valid WAV/FLAC file? Convert it with "
            "sox/ffmpeg or use a pipe entry 'sox FILE -t wav - |'"
        ) from e
    if data.shape[0] == 0:
        raise DataError(f"audio {name} has zero samples; remove it from the manifest")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (N,)
    if sr != target_sr:
        wave = soxr.resample(wave, sr, target_sr)  # (N * target_sr / sr,)
    return np.ascontiguousarray(wave, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# writing


def _atomic_write(path: Path, lines: list[str]) -> None:
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def write_kaldi_dir(utts: list[Utterance], out_dir: str | Path, data_list: bool = False) -> None:
    """Write wav.scp, text, utt2spk, spk2utt, utt2lang (and utt2dur when every duration is
    known), sorted by key; with `data_list`, also a wenet-style data.list (JSON lines with key,
    wav, txt).

    Example:
        >>> write_kaldi_dir(utts, "data/train_clean")
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for u in utts:
        if not u.key or any(c.isspace() for c in u.key):
            raise DataError(f"utterance key {u.key!r} is empty or contains whitespace")
        if u.key in seen:
            raise DataError(f"duplicate utterance key {u.key!r}; keys must be unique")
        seen.add(u.key)
        if "\n" in u.text or "\n" in u.wav:
            raise DataError(f"utterance {u.key!r}: text/wav must not contain newlines")
    items = sorted(utts, key=lambda u: u.key)
    _atomic_write(out / "wav.scp", [f"{u.key} {u.wav}" for u in items])
    _atomic_write(out / "text", [f"{u.key} {u.text}".rstrip() for u in items])
    _atomic_write(out / "utt2spk", [f"{u.key} {u.spk or u.key}" for u in items])
    spk2utt: dict[str, list[str]] = {}
    for u in items:
        spk2utt.setdefault(u.spk or u.key, []).append(u.key)
    _atomic_write(out / "spk2utt", [f"{s} {' '.join(k)}" for s, k in sorted(spk2utt.items())])
    _atomic_write(out / "utt2lang", [f"{u.key} {u.lang or text_lang(u.text)}" for u in items])
    if items and all(u.duration is not None for u in items):
        _atomic_write(out / "utt2dur", [f"{u.key} {u.duration:.3f}" for u in items])
    if data_list:
        rows = [{"key": u.key, "wav": u.wav, "txt": u.text} for u in items]
        _atomic_write(out / "data.list", [json.dumps(r, ensure_ascii=False) for r in rows])


def read_text_file(path: str | Path) -> dict[str, str]:
    """Read '<utt-id> <text>' lines (text may be empty) into a dict; duplicate ids raise.

    Example:
        >>> refs = read_text_file("data/test/text")
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} does not exist")
    return {k: v for k, (v, _) in _read_kv(path, allow_empty_value=True).items()}


def write_text_file(d: dict[str, str], path: str | Path) -> None:
    """Atomically write '<utt-id> <text>' lines sorted by id.

    Example:
        >>> write_text_file({"utt1": "你好WORLD"}, "exp/hyp.txt")
    """
    path = Path(path)
    for k, v in d.items():
        if not k or any(c.isspace() for c in k):
            raise DataError(f"{path}: key {k!r} is empty or contains whitespace")
        if "\n" in v:
            raise DataError(f"{path}: text for {k!r} contains a newline")
    _atomic_write(path, [f"{k} {d[k]}".rstrip() for k in sorted(d)])
