//! Sets `bpf_target_arch` to the architecture the object is for (the host's, or
//! `AYA_BPF_TARGET_ARCH`): `target_arch` is `bpf` here, and the register reads are per arch.
fn main() -> aya_build::Result<()> {
    aya_build::emit_bpf_target_arch_cfg()
}
