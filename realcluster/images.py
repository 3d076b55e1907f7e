"""Container images without a container engine.

* `pause`: the pod sandbox, a static C program (images/pause.c) built with gcc.
* `testbox`: Debian's busybox-static (nc, httpd, ping, sh) for the walkthrough's pods.
* `agnhost`: the e2e suite's test image, from the agnhost binary scripts/k8s-build.sh built
  from the pinned Kubernetes module, named exactly as that release's e2e framework expects.
* `coredns`: CoreDNS built by scripts/coredns-build.sh from its pinned Go module (static), on
  an empty root: the cluster DNS (`kube-dns`) of realcluster/dns.py.
* `policyd`: built from the project's `Dockerfile` itself, so the image CI tests and the
  image a user builds with Docker come from one definition. `FROM debian:12-slim` becomes a
  `debootstrap --variant=minbase bookworm` root file system, `FROM scratch` an empty one;
  stages are named with `AS`; WORKDIR, COPY (also `--from=<stage>`), RUN (in a chroot),
  ENV, ENTRYPOINT and CMD are carried out as Docker would; anything else in the Dockerfile
  is refused rather than skipped. The last stage is the image.

Each image is a root file system packed with umoci into an OCI layout and saved with skopeo
as a docker-archive, which `ctr images import` loads into a node's containerd. Archives are
cached in .tools/images under a hash of everything that went into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .paths import IMAGE_CACHE, ROOT, k8s_bin

Say = Callable[[str], None]

PAUSE = "localhost/policyd/pause:1"
TESTBOX = "localhost/policyd/testbox:1"
AGNHOST_REPOSITORY = "registry.k8s.io/e2e-test-images/agnhost"  # test/utils/image: PromoterE2eRegistry
POLICYD = "localhost/policyd/policyd:dev"
COREDNS_REPOSITORY = "localhost/policyd/coredns"
BASES = {"debian:12-slim": "bookworm", "scratch": ""}  # FROM → debootstrap suite ("": empty)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Image:
    name: str  # repository:tag as pods refer to it
    archive: Path  # docker-archive tar


@dataclass
class ImageConfig:
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"


def run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise RuntimeError(f"{shlex.join(str(c) for c in cmd)} failed ({proc.returncode}):\n{tail}")
    return proc  # type: ignore[no-any-return]  # (the overload taking **kw returns Any)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:16]


def _tree_bytes(path: Path) -> Iterator[bytes]:
    """Names and contents of every file under `path` (sorted), for cache keys."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        yield str(f.relative_to(ROOT)).encode()
        yield f.read_bytes()


def pack(rootfs: Path, name: str, config: ImageConfig, out: Path) -> None:
    """Root file system → OCI layout (umoci) → docker-archive `out` named `name` (skopeo)."""
    with tempfile.TemporaryDirectory(prefix="pdimg-") as tmp:
        layout, bundle = Path(tmp) / "oci", Path(tmp) / "bundle"
        ref = f"{layout}:img"
        run("umoci", "init", "--layout", layout)
        run("umoci", "new", "--image", ref)
        run("umoci", "unpack", "--image", ref, bundle)
        shutil.rmtree(bundle / "rootfs")
        # Same file system: a hard-link copy is instant and umoci only reads it.
        run("cp", "-a", "--reflink=auto", rootfs, bundle / "rootfs")
        run("umoci", "repack", "--image", ref, bundle)
        args = ["--config.workingdir", config.workdir]
        args += [f"--config.entrypoint={a}" for a in config.entrypoint]
        args += [f"--config.cmd={a}" for a in config.cmd]
        args += [f"--config.env={k}={v}" for k, v in config.env.items()]
        run("umoci", "config", "--image", ref, *args)
        # A name of this build's own: two builds of one image at once (two clusters coming
        # up) each write theirs, and the last rename wins with the same content.
        tmp_out = out.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial")
        tmp_out.unlink(missing_ok=True)
        # --insecure-policy: no signature policy applies to a local layout copied to a local
        # archive (and a fresh machine has no /etc/containers/policy.json).
        run("skopeo", "--insecure-policy", "copy", "--quiet", f"oci:{ref}", f"docker-archive:{tmp_out}:{name}")
        tmp_out.rename(out)


def _cached(stem: str, key: str) -> Path:
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    return IMAGE_CACHE / f"{stem}-{key}.tar"


def _drop_stale(stem: str, keep: Path) -> None:
    for old in IMAGE_CACHE.glob(f"{stem}-*.tar"):
        if old != keep:
            old.unlink()


def build_pause(say: Say) -> Image:
    src = ROOT / "realcluster" / "images" / "pause.c"
    out = _cached("pause", _digest(src.read_bytes(), PAUSE.encode()))
    if not out.exists():
        say(f"building image {PAUSE} (static C, gcc)")
        with tempfile.TemporaryDirectory(prefix="pdpause-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            rootfs.mkdir()
            run("gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", rootfs / "pause", src)
            pack(rootfs, PAUSE, ImageConfig(entrypoint=["/pause"]), out)
        _drop_stale("pause", out)
    return Image(PAUSE, out)


def _busybox() -> tuple[Path, str]:
    busybox = Path("/bin/busybox")
    version = run(busybox, "--help").stdout.splitlines()[0] if busybox.exists() else ""
    if "BusyBox" not in version:
        raise RuntimeError("/bin/busybox is not Debian's busybox-static: apt-get install busybox-static")
    return busybox, version.split("(")[0].strip()


def _busybox_rootfs(rootfs: Path, busybox: Path) -> None:
    """A minimal root: busybox and its applets in /bin, root and nobody, a sticky /tmp."""
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in run(busybox, "--list").stdout.split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")


def build_testbox(say: Say) -> Image:
    busybox, version = _busybox()
    out = _cached("testbox", _digest(busybox.read_bytes(), TESTBOX.encode()))
    if not out.exists():
        say(f"building image {TESTBOX} ({version}: sh, nc, httpd, ping)")
        with tempfile.TemporaryDirectory(prefix="pdbox-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _busybox_rootfs(rootfs, busybox)
            (rootfs / "www").mkdir()
            (rootfs / "www" / "index.html").write_text("policyd testbox\n")
            pack(rootfs, TESTBOX, ImageConfig(entrypoint=["/bin/sh"], env={"PATH": "/bin"}), out)
        _drop_stale("testbox", out)
    return Image(TESTBOX, out)


def agnhost_name() -> str:
    """The exact name and tag the e2e framework of the pinned release asks for (nothing is
    pulled: pods find it in containerd under this name)."""
    return f"{AGNHOST_REPOSITORY}:{k8s_bin('agnhost.version').read_text().strip()}"


def build_agnhost(say: Say) -> Image:
    """agnhost, the e2e suite's all-purpose test binary, built by scripts/k8s-build.sh from
    the pinned module, on busybox (upstream's image is Alpine; the specs we run exec only
    /agnhost)."""
    name = agnhost_name()
    binary = k8s_bin("agnhost")
    busybox, version = _busybox()
    out = _cached("agnhost", _digest(binary.read_bytes(), busybox.read_bytes(), name.encode()))
    if not out.exists():
        say(f"building image {name} (agnhost from the Kubernetes module, {version})")
        with tempfile.TemporaryDirectory(prefix="pdagn-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            _busybox_rootfs(rootfs, busybox)
            shutil.copy2(binary, rootfs / "agnhost")
            pack(rootfs, name, ImageConfig(entrypoint=["/agnhost"], cmd=["pause"], env={"PATH": "/bin"}), out)
        _drop_stale("agnhost", out)
    return Image(name, out)


def coredns_name() -> str:
    from policyd.lab.dns import coredns_version

    return f"{COREDNS_REPOSITORY}:{coredns_version()}"


def build_coredns(say: Say) -> Image:
    from policyd.lab.dns import coredns_binary

    name = coredns_name()
    binary = coredns_binary()  # (built now if missing)
    out = _cached("coredns", _digest(binary.read_bytes(), name.encode()))
    if not out.exists():
        say(f"building image {name} (CoreDNS from its Go module, static, on an empty root)")
        with tempfile.TemporaryDirectory(prefix="pddns-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            (rootfs / "etc").mkdir(parents=True)
            shutil.copy2(binary, rootfs / "coredns")
            pack(rootfs, name, ImageConfig(entrypoint=["/coredns"]), out)
        _drop_stale("coredns", out)
    return Image(name, out)


# --- the policyd image, from the Dockerfile ----------------------------------------------


@dataclass(frozen=True)
class Step:
    op: str
    arg: str
    line: int


def parse_dockerfile(text: str) -> list[Step]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    steps: list[Step] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        op, _, arg = full.partition(" ")
        steps.append(Step(op.upper(), arg.strip(), start))
    return steps


def _exec_form(step: Step) -> list[str]:
    try:
        value = json.loads(step.arg)
    except json.JSONDecodeError:
        value = None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"Dockerfile line {step.line}: {step.op} must be a JSON array of strings")
    return value


def dockerfile_inputs(steps: list[Step]) -> list[Path]:
    """Every file the build reads from the project: the key of the image cache."""
    paths = [ROOT / "Dockerfile"]
    for s in steps:
        if s.op == "COPY" and not s.arg.startswith("--from="):
            paths += [ROOT / p for p in s.arg.split()[:-1]]
    return paths


def stage_of(step: Step) -> tuple[str, str]:
    """`FROM image [AS name]` → (image, name); the image must be one the build knows."""
    words = step.arg.split()
    if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS") or words[0] not in BASES:
        raise ValueError(f"Dockerfile line {step.line}: FROM must name one of {sorted(BASES)} (optionally AS <stage>)")
    return words[0], words[2] if len(words) == 3 else ""


@contextlib.contextmanager
def _chroot_mounts(rootfs: Path) -> Iterator[None]:
    """/proc, /dev and /sys inside the build root, unmounted whatever happens."""
    mounted: list[Path] = []
    try:
        for src, target, kind in (("proc", "proc", "proc"), ("/dev", "dev", None), ("/sys", "sys", None)):
            point = rootfs / target
            point.mkdir(exist_ok=True)
            if kind:
                run("mount", "-t", kind, src, point)
            else:
                run("mount", "--rbind", src, point)
                run("mount", "--make-rslave", point)
            mounted.append(point)
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-R", "-l", str(point)], capture_output=True)


def _debian_base(suite: str, say: Say) -> Path:
    """A minbase root file system as a cached tarball (debootstrap takes ~30 s)."""
    tar = _cached(f"debian-{suite}-minbase", _digest(suite.encode()))
    if not tar.exists():
        mirror = "http://deb.debian.org/debian"
        say(f"debootstrap --variant=minbase {suite} (the image's base, cached in {tar.parent})")
        with tempfile.TemporaryDirectory(prefix="pdbase-", dir=IMAGE_CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            run("debootstrap", "--variant=minbase", suite, rootfs, mirror)
            partial = tar.with_suffix(f".{os.getpid()}-{threading.get_ident()}.partial")
            run("tar", "-C", rootfs, "--numeric-owner", "-cf", partial, ".")
            partial.rename(tar)
    return tar


def build_policyd(say: Say) -> Image:
    dockerfile = ROOT / "Dockerfile"
    steps = parse_dockerfile(dockerfile.read_text())
    key_parts = [b for p in dockerfile_inputs(steps) for b in _tree_bytes(p)]
    out = _cached("policyd", _digest(POLICYD.encode(), *key_parts))
    if out.exists():
        return Image(POLICYD, out)
    if not steps or steps[0].op != "FROM":
        raise ValueError("Dockerfile: the first instruction must be FROM")
    say(f"building image {POLICYD} from the Dockerfile (debootstrap + its steps in a chroot)")
    with tempfile.TemporaryDirectory(prefix="pdimg-", dir=IMAGE_CACHE) as tmp:
        stages: dict[str, Path] = {}
        rootfs, config = Path(), ImageConfig()
        for n, step in enumerate(steps):
            if step.op == "FROM":
                image, name = stage_of(step)
                rootfs, config = Path(tmp) / f"stage-{n}", ImageConfig()
                rootfs.mkdir()
                if BASES[image]:
                    run("tar", "-C", rootfs, "--numeric-owner", "-xf", _debian_base(BASES[image], say))
                if name:
                    stages[name] = rootfs
            else:
                _carry_out(step, rootfs, config, say, stages)
        pack(rootfs, POLICYD, config, out)
    _drop_stale("policyd", out)
    say(f"image {POLICYD}: {out.stat().st_size / 2**20:.0f} MiB (the archive: one uncompressed layer)")
    return Image(POLICYD, out)


def _carry_out(step: Step, rootfs: Path, config: ImageConfig, say: Say, stages: dict[str, Path]) -> None:
    def inside(p: str) -> Path:
        return rootfs / os.path.join(config.workdir, p).lstrip("/")

    if step.op == "WORKDIR":
        config.workdir = os.path.join(config.workdir, step.arg)
        inside(".").mkdir(parents=True, exist_ok=True)
    elif step.op == "COPY" and step.arg.startswith("--from="):
        stage, *sources, dest = step.arg.split()
        source_root = stages.get(stage.removeprefix("--from="))
        if source_root is None or not sources:
            raise ValueError(f"Dockerfile line {step.line}: COPY {stage} names no earlier stage (FROM ... AS <stage>)")
        for src in sources:  # a directory's contents into the destination, as Docker does
            path, target = source_root / src.lstrip("/"), inside(dest)
            (target if path.is_dir() else target.parent).mkdir(parents=True, exist_ok=True)
            run("cp", "-a", f"{path}/." if path.is_dir() else path, target)
    elif step.op == "COPY":
        *sources, dest = step.arg.split()
        for src in sources:
            path, target = ROOT / src, inside(dest)
            if path.is_dir():  # Docker copies a directory's contents into the destination
                shutil.copytree(path, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                if dest.endswith("/") or len(sources) > 1:
                    target = target / path.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    elif step.op == "ENV":
        for pair in shlex.split(step.arg):
            k, sep, v = pair.partition("=")
            if not sep:
                raise ValueError(f"Dockerfile line {step.line}: ENV takes KEY=VALUE pairs")
            config.env[k] = v.replace("$PATH", config.env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
    elif step.op == "ENTRYPOINT":
        config.entrypoint = _exec_form(step)
    elif step.op == "CMD":
        config.cmd = _exec_form(step)
    elif step.op == "RUN":
        say(f"  RUN {step.arg[:100]}")
        _run_in_chroot(rootfs, step.arg, config)
    else:
        raise ValueError(f"Dockerfile line {step.line}: {step.op} is not supported by the engine-less build")


def _run_in_chroot(rootfs: Path, command: str, config: ImageConfig) -> None:
    """Like Docker's RUN: /bin/sh -c in the image, with the build machine's DNS and CA
    bundle lent for the step only (pip behind this network's TLS proxy needs them; the
    image keeps its own). The CA bundle sits outside apt's reach, so a ca-certificates
    install in the step cannot replace it mid-way."""
    resolv = rootfs / "etc" / "resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    resolv.unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", resolv)
    ca = rootfs / "build-ca.crt"
    shutil.copy2(HOST_CA, ca)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "DEBIAN_FRONTEND": "noninteractive", "PIP_CERT": "/build-ca.crt", "SSL_CERT_FILE": "/build-ca.crt",
           "REQUESTS_CA_BUNDLE": "/build-ca.crt", **config.env}
    try:
        with _chroot_mounts(rootfs):
            run("chroot", rootfs, "/bin/sh", "-c", f"cd {shlex.quote(config.workdir)} && {command}", env=env)
    finally:
        ca.unlink(missing_ok=True)
        resolv.unlink(missing_ok=True)
        if saved is not None:
            resolv.write_bytes(saved)


def build_all(say: Say) -> list[Image]:
    return [build_pause(say), build_testbox(say), build_agnhost(say), build_coredns(say), build_policyd(say)]
