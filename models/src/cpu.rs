//! What this machine's CPU can do natively: its model name, feature flags and core count, read
//! from `/proc/cpuinfo` (Linux; elsewhere the model name and flags are empty).
//!
//! Used to decide whether a reduced-precision forward pass pays on this CPU. PyTorch's CPU
//! kernels run bf16 convolutions and matrix products at speed only with AVX-512 BF16 or AMX
//! (`avx512_bf16`, `amx_bf16`), and f16 only with AVX-512 FP16 or AMX FP16 (`avx512_fp16`,
//! `amx_fp16`); without them the values are converted element by element and a bf16 forward pass
//! runs several times *slower* than f32 (measured ~10× on an AVX2-only AMD EPYC, see the README).

use std::collections::BTreeSet;

/// Flags (any one suffices) that make bf16 matrix products native on x86 CPUs.
pub const BF16_FLAGS: [&str; 2] = ["avx512_bf16", "amx_bf16"];
/// Flags (any one suffices) that make f16 matrix products native on x86 CPUs.
pub const F16_FLAGS: [&str; 2] = ["avx512_fp16", "amx_fp16"];

/// The CPU as `/proc/cpuinfo` describes it (first processor's `model name` and `flags`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name`, e.g. `AMD EPYC 7B13` (empty when unknown).
    pub model_name: String,
    /// Feature flags, e.g. `avx2`, `avx512_bf16` (empty when unknown).
    pub flags: BTreeSet<String>,
    /// Logical cores available to this process (`std::thread::available_parallelism`, ≥ 1).
    pub cores: usize,
}

impl CpuInfo {
    /// Reads this machine's CPU: `/proc/cpuinfo` on Linux (model name and flags empty if it
    /// cannot be read), nothing elsewhere; the core count everywhere.
    pub fn read() -> CpuInfo {
        let text = if cfg!(target_os = "linux") {
            std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
        } else {
            String::new()
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        CpuInfo {
            cores,
            ..CpuInfo::parse(&text)
        }
    }

    /// Parses the text of `/proc/cpuinfo`: the first `model name` and `flags` lines (x86; the
    /// `Features` line on ARM). `cores` is left 0.
    pub fn parse(text: &str) -> CpuInfo {
        let field = |names: &[&str]| {
            text.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                names
                    .contains(&key.trim())
                    .then(|| value.trim().to_string())
            })
        };
        CpuInfo {
            model_name: field(&["model name"]).unwrap_or_default(),
            flags: field(&["flags", "Features"])
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            cores: 0,
        }
    }

    /// Whether the CPU has `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.contains(flag)
    }

    /// Whether bf16 matrix products are native (`avx512_bf16` or `amx_bf16`).
    pub fn native_bf16(&self) -> bool {
        BF16_FLAGS.iter().any(|f| self.has(f))
    }

    /// Whether f16 matrix products are native (`avx512_fp16` or `amx_fp16`).
    pub fn native_f16(&self) -> bool {
        F16_FLAGS.iter().any(|f| self.has(f))
    }

    /// The flags any one of which would make `kind` native, if the CPU has none of them (so
    /// a forward pass in `kind` will likely be slower than in f32); `None` when `kind` is
    /// native or is not a reduced floating-point kind (f32, f64, integers).
    pub fn missing_for(&self, kind: tch::Kind) -> Option<&'static [&'static str]> {
        match kind {
            tch::Kind::BFloat16 if !self.native_bf16() => Some(&BF16_FLAGS),
            tch::Kind::Half if !self.native_f16() => Some(&F16_FLAGS),
            _ => None,
        }
    }
}

/// Whether this machine's CPU runs bf16 natively (`avx512_bf16` or `amx_bf16`; false where the
/// flags cannot be read).
pub fn native_bf16() -> bool {
    CpuInfo::read().native_bf16()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    const AVX2_ONLY: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
        flags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\nflags\t\t: amx_bf16\n";
    const SAPPHIRE: &str = "model name\t: Intel(R) Xeon(R) Platinum 8481C\n\
        flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16\n";

    #[test]
    fn parses_the_first_processor() {
        let c = CpuInfo::parse(AVX2_ONLY);
        assert_eq!(c.model_name, "AMD EPYC 7B13");
        assert_eq!(
            c.flags.iter().map(String::as_str).collect::<Vec<_>>(),
            ["avx", "avx2", "fma", "fpu", "sse2"]
        );
        assert!(
            c.has("avx2") && !c.has("amx_bf16"),
            "second processor ignored"
        );
        assert_eq!(CpuInfo::parse(""), CpuInfo::default());
        let arm = CpuInfo::parse("Features\t: fp asimd bf16\n");
        assert!(arm.has("bf16") && arm.model_name.is_empty());
    }

    #[test]
    fn native_support_follows_the_flags() {
        let avx2 = CpuInfo::parse(AVX2_ONLY);
        assert!(!avx2.native_bf16() && !avx2.native_f16());
        assert_eq!(avx2.missing_for(Kind::BFloat16), Some(&BF16_FLAGS[..]));
        assert_eq!(avx2.missing_for(Kind::Half), Some(&F16_FLAGS[..]));
        assert_eq!(avx2.missing_for(Kind::Float), None);
        let spr = CpuInfo::parse(SAPPHIRE);
        assert!(spr.native_bf16() && spr.native_f16());
        assert_eq!(spr.missing_for(Kind::BFloat16), None);
        assert_eq!(spr.missing_for(Kind::Half), None);
        let amx_only = CpuInfo::parse("flags : amx_bf16\n");
        assert!(amx_only.native_bf16() && !amx_only.native_f16());
    }

    #[test]
    fn reading_this_machine_never_fails() {
        let c = CpuInfo::read();
        assert!(c.cores >= 1);
        assert_eq!(native_bf16(), c.native_bf16());
    }
}
