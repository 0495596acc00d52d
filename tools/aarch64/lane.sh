#!/usr/bin/env bash
# The aarch64 lane: the project's tests on arm64 Linux, emulated with qemu user mode on an x86_64 host.
#
#   tools/aarch64/lane.sh [--subset] [pytest args...]
#
# Builds (once, then cached) an arm64 Debian root, installs torch and the project in it the way the README tells
# an aarch64 user to, prints what it runs on (uname -m, torch, quantized engines), then runs pytest inside.
# --subset runs the lane's named subset (the tests marked `aarch64_lane`, what CI runs); with no pytest arguments
# and no --subset the whole suite runs. Emulation executes the ARM instruction set exactly (NEON, SVE2, i8mm);
# it measures nothing about speed (6-9x slower than native).
#
# Needs: root (chroot, mounts, binfmt registration) and Debian's qemu-user-static, binfmt-support and debootstrap
# (installed with apt-get when missing). Settings (environment):
#   OPREGISTRY_AARCH64_CACHE  where the root and its venv live   (default /var/cache/opregistry-aarch64)
#   OPREGISTRY_AARCH64_TORCH  the torch requirement in the root   (default torch==2.10.0: PyPI's newest CPU-only
#                             aarch64 wheel; later releases there are CUDA builds of ~2.8 GB)
#   OPREGISTRY_AARCH64_CPU    the emulated CPU, QEMU_CPU           (default max,sme=off: SVE2, i8mm, dotprod; qemu
#                             7.2's SME makes oneDNN die with SIGILL)
#   OPREGISTRY_AARCH64_SUITE  the Debian release of the root      (default bookworm)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
cache=${OPREGISTRY_AARCH64_CACHE:-/var/cache/opregistry-aarch64}
torch_req=${OPREGISTRY_AARCH64_TORCH:-torch==2.10.0}
qemu_cpu=${OPREGISTRY_AARCH64_CPU:-max,sme=off}
suite=${OPREGISTRY_AARCH64_SUITE:-bookworm}
root=$cache/root-$suite
venv=/opt/venv                # inside the root
src=/opt/opregistry           # inside the root: a copy of this checkout, installed from there

say() { printf '[aarch64 lane] %s\n' "$*" >&2; }
die() { printf '[aarch64 lane] cannot run: %s\n' "$*" >&2; exit 2; }
elapsed() { printf '%dm%02ds' $((SECONDS / 60)) $((SECONDS % 60)); }

subset=0
if [[ ${1:-} == --subset ]]; then subset=1; shift; fi
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi

# -- what the host must give -------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "needs root (chroot, mounts and binfmt registration); run it as root, e.g. with sudo"
case $(uname -m) in
  x86_64) ;;
  aarch64) die "this host is aarch64 already: run the README's commands directly, no emulation needed" ;;
  *) die "written for x86_64 hosts; this one is $(uname -m)" ;;
esac
missing=()
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || die "needs Debian's packages ${missing[*]} (no apt-get here to install them)"
  say "installing ${missing[*]} (Debian packages)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get could not install ${missing[*]}"
fi
binfmt=/proc/sys/fs/binfmt_misc
if [[ ! -e $binfmt/register ]]; then
  mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null \
    || die "needs binfmt_misc mounted at $binfmt (mount -t binfmt_misc binfmt_misc $binfmt failed: in a container the host must allow it)"
fi
if [[ ! -e $binfmt/qemu-aarch64 ]]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
[[ -e $binfmt/qemu-aarch64 ]] || die "binfmt has no qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"
grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null || grep -q '^enabled' "$binfmt/qemu-aarch64" \
  || die "binfmt entry qemu-aarch64 is disabled (update-binfmts --enable qemu-aarch64)"

# -- one run at a time per cache (a run replaces the project's copy and reinstalls it) ----------------------
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock -n 9 || die "another lane run is using $cache (wait for it, or set OPREGISTRY_AARCH64_CACHE)"

# -- the arm64 root (cached) -------------------------------------------------------------------------------
debian_mirror() {   # the host's own Debian mirror, so the root comes from where this host's packages come from
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
        | grep -v -- '-security' | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1}' | grep -m1 -E '^https?://' || true)
  [[ -n $uri ]] || die "no Debian mirror found in /etc/apt/sources.list*"
  printf '%s\n' "$uri"
}

if [[ ! -f $root/.lane-root-ok ]]; then
  mirror=$(debian_mirror)
  say "building the arm64 Debian root ($suite) in $root: about 10 minutes, once"
  rm -rf "$root.partial"
  mkdir -p "$cache"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$suite" "$root.partial" "$mirror" >/dev/null \
    || die "debootstrap (first stage) failed"
  cp "$(command -v qemu-aarch64-static)" "$root.partial/usr/bin/"
  chroot "$root.partial" /debootstrap/debootstrap --second-stage >/dev/null \
    || die "debootstrap's second stage (emulated) failed; see $root.partial/debootstrap/debootstrap.log"
  touch "$root.partial/.lane-root-ok"
  mv "$root.partial" "$root"
  say "root ready after $(elapsed)"
fi

# -- mounts for the run (undone on exit) -------------------------------------------------------------------
mounted=()
cleanup() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounted+=("$2"); }
mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc"; mounted+=("$root/proc"); }
mountpoint -q "$root/dev" || bind /dev "$root/dev"
mountpoint -q "$root/sys" || bind /sys "$root/sys"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# pip inside needs the host's CA bundle (and its proxy settings, if any, passed below)
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca.crt"
if [[ $torch_req == *2.1[1-9]* || $torch_req == *2.[2-9][0-9]* ]]; then
  # torch >= 2.11 reads /proc/cpuinfo at import; under qemu that is the host's x86 one, and it segfaults.
  printf 'processor\t: 0\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\nCPU revision\t: 0\n' \
    > "$cache/cpuinfo"
  bind "$cache/cpuinfo" "$root/proc/cpuinfo"
fi

inside() {   # run a command in the root with a clean environment
  chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 QEMU_CPU="$qemu_cpu" PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 ${PIP_INDEX_URL:+PIP_INDEX_URL="$PIP_INDEX_URL"} \
    ${HTTPS_PROXY:+HTTPS_PROXY="$HTTPS_PROXY"} ${https_proxy:+https_proxy="$https_proxy"} \
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "$@"
}

# -- the project, installed as the README says for aarch64 -------------------------------------------------
rm -rf "$root$src"
mkdir -p "$root$src"
# the checkout as git sees it (tracked and untracked, not ignored), so no venv or build output rides along
if git -C "$project" rev-parse --git-dir >/dev/null 2>&1; then
  (cd "$project" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf -)
else
  tar -C "$project" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=build -cf - .
fi | tar -C "$root$src" -xf -
stamp="$torch_req"
if [[ ! -x $root$venv/bin/python || $(cat "$root$venv/.lane-torch" 2>/dev/null) != "$stamp" ]]; then
  say "creating $venv in the root with $torch_req (emulated pip: a few minutes, once)"
  rm -rf "$root$venv"
  inside python3 -m venv "$venv"
  inside "$venv/bin/pip" install -q "$torch_req" || die "pip could not install $torch_req for aarch64"
  echo "$stamp" > "$root$venv/.lane-torch"
fi
say "installing the project: pip install $torch_req '.[test]'"
inside sh -c "cd $src && $venv/bin/pip install -q '$torch_req' '.[test]'" || die "pip install of the project failed"

inside "$venv/bin/python" - <<'EOF'
import platform, torch
try:
    import triton
    tv = triton.__version__
except Exception as e:   # noqa: BLE001
    tv = f"not importable ({e.__class__.__name__})"
print(f"[aarch64 lane] uname -m: {platform.machine()}, torch {torch.__version__}, triton {tv}")
print(f"[aarch64 lane] quantized engines: {', '.join(torch.backends.quantized.supported_engines)}; "
      f"default: {torch.backends.quantized.engine}")
EOF
args=("$@")
if ((subset)); then args=(-m aarch64_lane "${args[@]}"); fi
say "pytest ${args[*]} (emulated; QEMU_CPU=$qemu_cpu), setup took $(elapsed)"
set +e
inside sh -c "cd $src && exec $venv/bin/python -m pytest -p no:cacheprovider \"\$@\"" pytest "${args[@]}"
rc=$?
set -e
say "done in $(elapsed), pytest exit code $rc"
exit $rc
