//! Bounded fuzzing on stable Rust: each target of `mesh::fuzz` runs on
//! mutations of its committed corpus (`tests/fuzz/corpus/<target>/`, every
//! file a seed) for `MESH_FUZZ_SECS` seconds (default 2, so a plain `cargo
//! test` stays quick; 60 when `CI` is set, as `.ci/run` sets it) or
//! `MAX_RUNS` inputs, whichever ends first.
//!
//! There is no coverage feedback: each input is a seed or an earlier
//! mutant, edited one to four times (a bit flipped, a byte set to one the
//! formats care about, bytes inserted, a range deleted, duplicated or
//! spliced in from another seed, a truncation). So the corpus decides how
//! deep a target reaches: a seed per shape of input.
//!
//! A run is reproducible: the generator is a xorshift64 seeded from a
//! fixed seed (`MESH_FUZZ_SEED` replaces it) and the target's name. An
//! input that panics is written to `target/fuzz-crashes/<target>-<hash>.bin`
//! and printed as a byte string, and the test fails; the fix comes with a
//! unit test of that input beside the code it crashed.
//!
//! Run: `MESH_FUZZ_SECS=60 cargo test --test fuzz -- --nocapture`

// Test code: the wall clock bounds the run, and unwrap() is an assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Inputs are cut to this length (the control API's body limit).
const MAX_INPUT: usize = 64 * 1024;
/// Inputs per target at most, however long the time allows.
const MAX_RUNS: u64 = 5_000_000;
/// Seconds per target when `MESH_FUZZ_SECS` is unset.
const DEFAULT_SECS: f64 = 2.0;
/// ... and in CI (`CI` set).
const CI_SECS: f64 = 60.0;
/// The generator's seed when `MESH_FUZZ_SEED` is unset ("meshfuzz").
const DEFAULT_SEED: u64 = 0x6d65_7368_6675_7a7a;
/// Earlier mutants kept to mutate again; the oldest makes room.
const POOL: usize = 512;
/// Bytes worth writing on purpose: zero, the edges of a signed and an
/// unsigned byte, and the separators of HTTP, YAML and JSON.
const INTERESTING: &[u8] = &[0, 0xff, 0x7f, 0x80, b'\r', b'\n', b':', b' ', b'"', b'{'];
/// A crash's input is printed up to this length (the file has all of it).
const MAX_PRINTED: usize = 8 * 1024;

/// xorshift64 (Marsaglia): tiny, fast, and the same sequence everywhere.
struct Rng(u64);

#[test]
fn detect() {
    fuzz("detect", mesh::fuzz::detect);
}

#[test]
fn policy() {
    fuzz("policy", mesh::fuzz::policy);
}

#[test]
fn dns() {
    fuzz("dns", mesh::fuzz::dns);
}

#[test]
fn register() {
    fuzz("register", mesh::fuzz::register);
}

/// Runs `target` on its corpus, then on mutants until the budget ends.
fn fuzz(name: &str, target: fn(&[u8])) {
    let seeds = corpus(name);
    let base_seed = env_seed();
    let mut rng = Rng::new(base_seed ^ fnv1a(name.as_bytes()));
    let budget = time_budget();
    let start = Instant::now();
    // The seeds themselves first: each is a regression test.
    for seed in &seeds {
        run(name, target, seed);
    }
    let mut runs = seeds.len() as u64;
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(POOL);
    let mut oldest = 0;
    while runs < MAX_RUNS && start.elapsed() < budget {
        let from_seed = pool.is_empty() || rng.below(2) == 0;
        let mut input = if from_seed {
            seeds[rng.below(seeds.len())].clone()
        } else {
            pool[rng.below(pool.len())].clone()
        };
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut input, &seeds);
        }
        run(name, target, &input);
        runs += 1;
        if pool.len() < POOL {
            pool.push(input);
        } else {
            pool[oldest] = input;
            oldest = (oldest + 1) % POOL;
        }
    }
    println!(
        "fuzz {name}: {runs} inputs in {:.1?} from {} seeds (MESH_FUZZ_SEED={base_seed})",
        start.elapsed(),
        seeds.len()
    );
}

/// Runs `target` on `input`; a panic saves the input and fails the test.
fn run(name: &str, target: fn(&[u8]), input: &[u8]) {
    if panic::catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return;
    }
    let path = save_crash(name, input);
    let shown = &input[..input.len().min(MAX_PRINTED)];
    let cut = match shown.len() < input.len() {
        true => format!(" (first {MAX_PRINTED} of {} bytes)", input.len()),
        false => String::new(),
    };
    panic!(
        "fuzz {name}: an input panicked (message above), saved as {}{cut}:\nb\"{}\"",
        path.display(),
        shown.escape_ascii()
    );
}

/// One random edit of `input`, which stays at most `MAX_INPUT` long.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1u8 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 if len > 0 => {
            let (a, b) = range(rng, len);
            input.copy_within(b.., a);
            input.truncate(len - (b - a));
        }
        3 if len > 0 => {
            let (a, b) = range(rng, len);
            let copy = input[a..b].to_vec();
            let at = rng.below(len + 1);
            insert(input, at, &copy);
        }
        4 => {
            let other = &seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let (a, b) = range(rng, other.len());
                let at = rng.below(len + 1);
                insert(input, at, &other[a..b]);
            }
        }
        5 if len > 0 => input.truncate(rng.below(len)),
        // Random bytes, some of them interesting; also what an empty input gets.
        _ => {
            let n = 1 + rng.below(16);
            let bytes: Vec<u8> = (0..n)
                .map(|_| match rng.below(4) {
                    0 => INTERESTING[rng.below(INTERESTING.len())],
                    _ => rng.byte(),
                })
                .collect();
            let at = rng.below(len + 1);
            insert(input, at, &bytes);
        }
    }
    input.truncate(MAX_INPUT);
}

/// A non-empty range within `0..len` (`len` > 0): mostly short, now and
/// then as long as the rest.
fn range(rng: &mut Rng, len: usize) -> (usize, usize) {
    let start = rng.below(len);
    let room = len - start;
    let most = match rng.below(8) {
        0 => room,
        _ => room.min(16),
    };
    (start, start + 1 + rng.below(most))
}

fn insert(input: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let tail = input.split_off(at);
    input.extend_from_slice(bytes);
    input.extend_from_slice(&tail);
}

/// Every file of `tests/fuzz/corpus/<name>/`, in name order.
fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(name);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| {
            let mut seed = std::fs::read(p).unwrap();
            seed.truncate(MAX_INPUT);
            seed
        })
        .collect();
    assert!(!seeds.is_empty(), "corpus {} has no seeds", dir.display());
    seeds
}

/// Writes a crashing input where CI keeps it: `target/fuzz-crashes/`.
fn save_crash(name: &str, input: &[u8]) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("fuzz-crashes");
    let path = dir.join(format!("{name}-{:016x}.bin", fnv1a(input)));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input)) {
        eprintln!("cannot save {}: {e}", path.display());
    }
    path
}

/// `MESH_FUZZ_SECS`: seconds per target, fractions allowed.
fn time_budget() -> Duration {
    let Ok(text) = std::env::var("MESH_FUZZ_SECS") else {
        let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        return Duration::from_secs_f64(if ci { CI_SECS } else { DEFAULT_SECS });
    };
    let secs = text
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1e9).contains(s))
        .unwrap_or_else(|| panic!("MESH_FUZZ_SECS={text:?}: expected seconds, such as 60"));
    Duration::from_secs_f64(secs)
}

/// `MESH_FUZZ_SEED`: another sequence of inputs (a nightly job can walk
/// further); unset, every run makes the same ones.
fn env_seed() -> u64 {
    match std::env::var("MESH_FUZZ_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("MESH_FUZZ_SEED={text:?}: expected a whole number")),
        Err(_) => DEFAULT_SEED,
    }
}

/// FNV-1a: names a crash file by its bytes, and mixes a target's name into
/// its seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// === impl Rng ===

impl Rng {
    fn new(seed: u64) -> Rng {
        // Zero is xorshift's one fixed point: it would stay zero.
        Rng(if seed == 0 { DEFAULT_SEED } else { seed })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// In `0..n`; `n` must not be zero. (The modulo's bias is of no
    /// matter here.)
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % (n as u64)) as usize
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }
}
