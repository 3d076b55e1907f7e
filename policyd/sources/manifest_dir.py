"""A directory of Kubernetes manifests as an event source (the lab's "API server").

`poll()` compares the directory with what it saw last time (file name, size, mtime, inode)
and turns the difference into Upsert/Delete events, re-reading only changed files. Writers
replace files atomically (write a dot-file, rename), so a poll never sees half a file.
A file that does not parse yields no events and is reported in `problems`; the objects it
held before stay as they were, as a cluster keeps the last accepted version.

The directory may hold a `generation` file (an integer the writer bumps after each change)
so that readers can report which generation they have applied.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..model.events import Delete, Event, Upsert, key_of, kind_of
from ..model.manifests import SUFFIXES, Manifests, load_documents, read_text
from ..model.objects import KubeObject
from ..model.problems import Problem

Stamp = tuple[int, int, int]  # size, mtime_ns, inode
IGNORED = "this definition is ignored"


@dataclass
class ManifestDirSource:
    path: Path
    files: dict[str, tuple[Stamp, dict[tuple[str, str], KubeObject]]] = field(default_factory=dict)
    problems: dict[str, list[Problem]] = field(default_factory=dict)
    generation: int = 0
    current: dict[tuple[str, str], KubeObject] = field(default_factory=dict)  # what the last events add up to

    def _scan(self) -> dict[str, Stamp]:
        out: dict[str, Stamp] = {}
        with os.scandir(self.path) as it:
            for e in it:
                if e.name.startswith(".") or not e.name.endswith(SUFFIXES) or not e.is_file():
                    continue
                try:
                    st = e.stat()
                except FileNotFoundError:  # removed between the listing and now: it is gone
                    continue
                out[e.name] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return out

    def _read(self, name: str) -> dict[tuple[str, str], KubeObject] | None:
        m = Manifests()
        if not (self.path / name).exists():
            return {}
        text = read_text(self.path / name, m.problems)
        if text is not None:
            load_documents(name, text, m)
        if m.problems:
            self.problems[name] = m.problems
            return None
        self.problems.pop(name, None)
        objs: list[KubeObject] = [*m.namespaces, *m.pods, *m.policies, *m.cluster_policies, *m.nodes]
        return {(kind_of(o), key_of(o)): o for o in objs}

    def poll(self) -> list[Event]:
        """Events for everything that changed since the last poll (all objects at first).
        The generation is read before the directory: `lab apply` writes its files, then bumps
        the generation, so every file of the generation read is in this scan (read after
        the scan, a bump could be reported for files the scan missed)."""
        generation = self._generation_now()
        now = self._scan()
        before = self.current
        changed = False
        for name in set(self.files) - set(now):
            del self.files[name]
            self.problems.pop(name, None)
            changed = True
        for name, stamp in now.items():
            if name in self.files and self.files[name][0] == stamp:
                continue
            objs = self._read(name)
            if objs is None:  # keep the last good version of this file
                old = self.files.get(name)
                self.files[name] = (stamp, old[1] if old else {})
                continue
            self.files[name] = (stamp, objs)
            changed = True
        if generation is not None:
            self.generation = generation
        if not changed:
            return []
        after = self.current = self._merged()
        events: list[Event] = [Delete(kind, key) for (kind, key) in before.keys() - after.keys()]  # type: ignore[arg-type]
        events += [Upsert(o) for k, o in sorted(after.items()) if before.get(k) != o]
        return events

    def _merged(self) -> dict[tuple[str, str], KubeObject]:
        """Every object of every file. An object defined in two files (by kind and name) is
        taken from the first file by name and the other file is reported, as `policyd
        matrix` refuses the duplicate: one silently winning over the other would enforce
        whichever was read last."""
        out: dict[tuple[str, str], KubeObject] = {}
        where: dict[tuple[str, str], str] = {}
        for name in sorted(self.files):
            dups = []
            for k, o in self.files[name][1].items():
                if k in out:
                    dups.append(Problem(name, None, "metadata.name", f"duplicate {k[0]} {k[1]}: already defined in {where[k]}; "
                                        + IGNORED, k[0], k[1]))
                    continue
                out[k], where[k] = o, name
            others = [p for p in self.problems.get(name, []) if not p.message.endswith(IGNORED)]
            if dups or others:
                self.problems[name] = others + dups
            else:
                self.problems.pop(name, None)  # no longer a duplicate
        return out

    def _generation_now(self) -> int | None:
        try:
            return int((self.path / "generation").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
