#!/usr/bin/env bash
# Installs the system packages the project's build and tests need, when missing. Idempotent;
# prints what it found and what it did.
#
#   package            needed by
#   iproute2           the NAT lab (`ip netns`, veth, bridges; natlab/README.md)
#   iptables           the NAT lab's routers (iptables rules inside network namespaces)
#   protobuf-compiler  kaspa-p2p-lib's build script, which compiles Kaspa's .proto files with
#                      protoc (punch's own protocol does not: proto/ uses the pure-Rust protox)
#   libclang-dev       bindgen, which generates RocksDB's bindings (kaspad, in kaspad-punch). It
#                      loads the C library libclang.so; libclang-cpp (the C++ interface, often
#                      present on its own) is not enough, so presence is asked of the package
#                      manager, never guessed from a file name.
#   g++                RocksDB is compiled from C++ source by librocksdb-sys's build script;
#                      it brings gcc, which ring (snow's faster cipher) compiles its C with
#   curl               the README's operator walkthrough (scraping --metrics), which
#                      tests/tests/walkthrough.rs runs as written
#   systemd            systemd-analyze, which checks the units in deploy/ (tests/tests/deploy.rs)
#
# Kernel modules for the lab (conntrack, NAT, NFQUEUE for the delay helper, statistic for loss)
# are loaded when possible; most kernels have them built in, so failure is tolerated.
#
# When it cannot install (not root, no apt-get, apt-get failing) it says which packages are
# missing and the command to install them by hand, and exits 0: the build then fails with the
# error the README's "When setup cannot install" section explains, and the namespace tests skip
# loudly by themselves.
set -u

say() { echo "setup.sh: $*"; }

packages=(iproute2 iptables protobuf-compiler libclang-dev g++ curl systemd)

# Installed, as the package manager knows it ("ii" = desired install, status installed).
installed() {
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

# Without dpkg (not Debian), check what each consumer runs or loads instead.
present_without_dpkg() {
    case "$1" in
    iproute2) command -v ip >/dev/null 2>&1 ;;
    iptables) command -v iptables >/dev/null 2>&1 ;;
    protobuf-compiler) command -v protoc >/dev/null 2>&1 ;;
    g++) command -v c++ >/dev/null 2>&1 ;;
    curl) command -v curl >/dev/null 2>&1 ;;
    systemd) command -v systemd-analyze >/dev/null 2>&1 ;;
    # clang-sys accepts libclang.so / libclang-N.so(.M): the C library, not libclang-cpp.
    libclang-dev)
        [ -n "${LIBCLANG_PATH:-}" ] && return 0
        for f in /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
            /usr/lib64/libclang.so /usr/lib/libclang.so /usr/lib/*/libclang-[0-9]*.so*; do
            [ -e "$f" ] && return 0
        done
        return 1
        ;;
    esac
}

have_dpkg=0
command -v dpkg-query >/dev/null 2>&1 && have_dpkg=1

check_all() {
    missing=()
    for p in "${packages[@]}"; do
        if [ "$have_dpkg" -eq 1 ]; then
            installed "$p" || missing+=("$p")
        else
            present_without_dpkg "$p" || missing+=("$p")
        fi
    done
}

cannot_install() {
    say "CANNOT INSTALL ${missing[*]}: $1"
    say "install them by hand, e.g.: sudo apt-get install ${missing[*]}"
    say "(without them: the Kaspa crates do not build, see README \"When setup cannot install\";"
    say " the NAT-lab tests skip with a SKIPPED line)"
}

check_all
if [ "${#missing[@]}" -eq 0 ]; then
    say "${packages[*]} already installed"
elif [ "$have_dpkg" -eq 0 ]; then
    cannot_install "no dpkg/apt-get on this system (the names above are Debian's packages)"
elif [ "$(id -u)" -ne 0 ]; then
    cannot_install "not root"
elif ! command -v apt-get >/dev/null 2>&1; then
    cannot_install "no apt-get"
else
    say "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || say "apt-get update failed (continuing with the package lists present)"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || say "apt-get install returned an error"
    wanted=("${missing[@]}")
    check_all
    if [ "${#missing[@]}" -eq 0 ]; then
        say "installed ${wanted[*]}"
    else
        cannot_install "apt-get did not install them"
    fi
fi

# Modules: built in on many kernels (then /lib/modules may not even exist). Tolerate failure.
if [ "$(id -u)" -ne 0 ]; then
    say "not root: not loading kernel modules"
elif command -v modprobe >/dev/null 2>&1 && [ -d "/lib/modules/$(uname -r)" ]; then
    for m in nf_conntrack nf_nat iptable_nat iptable_filter xt_MASQUERADE xt_REJECT \
        xt_conntrack xt_statistic xt_NFQUEUE nfnetlink_queue veth bridge; do
        if modprobe "$m" 2>/dev/null; then
            say "modprobe $m: ok"
        else
            say "modprobe $m: not loaded (may be built in)"
        fi
    done
else
    say "no modprobe or no modules directory for $(uname -r): assuming netfilter is built in"
fi

if command -v iptables >/dev/null 2>&1; then
    say "$(iptables --version 2>&1)"
fi
exit 0
