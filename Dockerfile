# syntax=docker/dockerfile:1
#
# The tracer node agent image: one self-contained binary (the eBPF object embedded).
#
#   docker build -t REGISTRY/tracer:TAG .
#
# BuildKit is needed (the default builder since Docker 23): the build caches cargo's registry
# and target directories between builds. Kubernetes manifests: deploy/kubernetes, deploy/README.md.
#
# Build arguments (defaults are what the project is developed and tested with):
#   RUST_VERSION        stable toolchain of the builder image (the workspace's rust-version)
#   RUST_NIGHTLY        the nightly that builds the eBPF crate; a dated one keeps builds
#                       reproducible, `nightly` takes the newest
#   BPF_LINKER_VERSION  bpf-linker from crates.io; empty takes the newest

ARG RUST_VERSION=1.95

# ---------------------------------------------------------------------------------------------
# Builder: does what `cargo xtask build` does on a developer machine (xtask/src/main.rs).
FROM rust:${RUST_VERSION}-bookworm AS builder

ARG RUST_NIGHTLY=nightly-2026-05-20
ARG BPF_LINKER_VERSION=0.13.0

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The eBPF crate builds with the nightly toolchain (tracer-ebpf/rust-toolchain.toml says
# `nightly`) and needs rust-src: the bpfel target builds `core` from source. A dated nightly is
# installed under its own name, then also made the toolchain called `nightly`, so that the
# toolchain file, `rustc +nightly` and xtask find it.
RUN set -eux; \
    rustup toolchain install "$RUST_NIGHTLY" --profile minimal --component rust-src; \
    if [ "$RUST_NIGHTLY" != nightly ]; then \
        host="$(rustc -vV | sed -n 's/^host: //p')"; \
        ln -s "$RUST_NIGHTLY-$host" "$RUSTUP_HOME/toolchains/nightly-$host"; \
    fi; \
    rustc +nightly -vV; \
    rustup component list --toolchain nightly --installed | grep -q '^rust-src'

# bpf-linker built against the nightly's own LLVM, as xtask's ensure_bpf_linker does: a prefix
# whose lib/libLLVM.so is the nightly's libLLVM, LLVM_PREFIX pointing at it, and the cargo
# feature named after the LLVM major version. The real shared object is libLLVM.so.<version>;
# libLLVM-<major>-...so beside it is a linker script, which cannot stand in for it here.
# The prefix stays in the image and also holds libLLVM under its own name (its soname), so that
# bpf-linker runs by itself, through its rpath, not only under rustup (which adds the
# toolchain's lib/ to LD_LIBRARY_PATH).
RUN set -eux; \
    sysroot="$(rustc +nightly --print sysroot)"; \
    llvm="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' -printf '%f\n' | sort | head -n 1)"; \
    [[ -n "$llvm" ]] || llvm="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM-*.so' -printf '%f\n' | sort | head -n 1)"; \
    major="$(sed -E 's/^libLLVM(\.so\.|-)([0-9]+).*/\2/' <<<"$llvm")"; \
    [[ "$major" =~ ^[0-9]+$ ]]; \
    mkdir -p /opt/llvm-prefix/lib; \
    ln -sf "$sysroot/lib/$llvm" /opt/llvm-prefix/lib/libLLVM.so; \
    ln -sf "$sysroot/lib/$llvm" "/opt/llvm-prefix/lib/$llvm"; \
    LLVM_PREFIX=/opt/llvm-prefix LD_LIBRARY_PATH=/opt/llvm-prefix/lib \
        cargo install --locked ${BPF_LINKER_VERSION:+--version "$BPF_LINKER_VERSION"} \
        bpf-linker --no-default-features --features "llvm-$major"; \
    bpf-linker --version; \
    rm -rf "$CARGO_HOME/registry"

WORKDIR /src
COPY . .

# `cargo xtask build` finds rust-src and bpf-linker present, builds the eBPF object, then the
# release binary with the object embedded. target/ is a cache mount (kept between builds, not
# in the image), so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    --mount=type=cache,target=/src/tracer-ebpf/target,sharing=locked \
    set -eux; \
    cargo xtask build; \
    install -D -m 0755 target/release/tracer /out/tracer; \
    /out/tracer --version

# The shipped plugins, as examples under /usr/share/tracer/plugins (not in /etc/tracer/plugins:
# in Kubernetes that is a volume, which would hide them), each with its NAME.example.toml.
# `cargo xtask build-plugins` adds the wasm32-unknown-unknown target and wraps each module in a
# component; every plugin must accept its example.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    cargo xtask build-plugins; \
    install -D -m 0644 -t /out/plugins target/plugins/*.wasm target/plugins/*.example.toml; \
    for p in /out/plugins/*.wasm; do \
        /out/tracer plugins check "$p" --config "${p%.wasm}.example.toml" > /dev/null; \
    done

# ---------------------------------------------------------------------------------------------
# Runtime: the binary and CA certificates (for https:// OTLP endpoints), nothing else.
FROM debian:bookworm-slim

LABEL org.opencontainers.image.title="tracer" \
      org.opencontainers.image.description="eBPF HTTP tracer: one OpenTelemetry span per HTTP request of every process on the node, exported over OTLP" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY --from=builder /out/tracer /usr/local/bin/tracer
COPY --from=builder /out/plugins/ /usr/share/tracer/plugins/

# Mount points of the Kubernetes manifests: the --config file's directory and --plugins-dir.
RUN mkdir -p /etc/tracer/config /etc/tracer/plugins

# Root, because the kernel checks capabilities (CAP_BPF, CAP_PERFMON, ...) that a non-root user
# does not get from the container runtime. The DaemonSet drops every other capability.
# hadolint ignore=DL3002
USER 0:0

# SIGTERM (Kubernetes' stop signal) detaches the probes, drains and flushes the exports.
ENTRYPOINT ["/usr/local/bin/tracer"]
CMD ["run"]
