#!/usr/bin/env bash
# Installs what the project's tests need, when missing. Idempotent; prints what it did.
#
# - iptables (with the legacy and nft back ends): the NAT lab (tests/natlab/README.md)
#   builds its routers from iptables rules inside network namespaces.
# - iproute2 (`ip netns`, veth, bridges) for the same lab.
# - protobuf-compiler: kaspa-p2p-lib's build script compiles Kaspa's .proto files with protoc
#   (punch's own protocol does not need it: proto/ uses the pure-Rust protox).
# - libclang-dev: RocksDB's bindings (kaspad, in kaspad-punch) are generated with bindgen.
# - g++: RocksDB is compiled from C++ source by its build script.
# - Kernel modules for the lab (conntrack, NAT, NFQUEUE for the delay helper, statistic
#   for loss). Most kernels have them built in; loading is tried and failure tolerated.
#
# Without root nothing is installed: the namespace tests then skip loudly by themselves, and the
# Kaspa crates need protoc and libclang installed by hand.
set -u

say() { echo "setup.sh: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    say "not root: installing nothing (natlab tests will skip)"
    exit 0
fi

missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
# Kaspa crates (node-integration, kaspad-punch): kaspa-p2p-lib's build script runs protoc;
# kaspad's RocksDB bindings are generated with libclang, and RocksDB itself is C++.
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 \
    || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)

if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || say "apt-get update failed (continuing)"
        if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
            say "installed ${missing[*]}"
        else
            say "apt-get install ${missing[*]} FAILED (natlab tests will skip)"
        fi
    else
        say "missing ${missing[*]} and no apt-get: install them by hand (natlab tests will skip)"
    fi
else
    say "iproute2, iptables, protoc, libclang and g++ already present"
fi

# Modules: built in on many kernels (then /lib/modules may not even exist). Tolerate failure.
if command -v modprobe >/dev/null 2>&1 && [ -d "/lib/modules/$(uname -r)" ]; then
    for m in nf_conntrack nf_nat iptable_nat iptable_filter xt_MASQUERADE xt_REJECT \
        xt_conntrack xt_statistic xt_NFQUEUE nfnetlink_queue veth bridge; do
        if modprobe "$m" 2>/dev/null; then
            say "modprobe $m: ok"
        else
            say "modprobe $m: not loaded (may be built in)"
        fi
    done
else
    say "no modules directory for $(uname -r): assuming netfilter is built in"
fi

if command -v iptables >/dev/null 2>&1; then
    say "$(iptables --version 2>&1)"
fi
exit 0
