//! Compiles the autograd hook shim (src/hooks.cpp) against the libtorch that torch-sys linked,
//! and puts an rpath to it in this crate's tests and examples; dependents get the directory as
//! DEP_FERROVOD_TCH_LIBTORCH_LIB for their own rpath.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/hooks.cpp");
    // torch-sys (`links = "tch"`, a direct dependency for this) publishes the directory.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys publishes libtorch_lib"));
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:libtorch_lib={}", lib.display());
    let include = lib.parent().expect("libtorch's lib has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .std("c++17")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", cxx11_abi())
        .warnings(false)
        .file("src/hooks.cpp")
        .compile("ferrovod_tch_hooks");
}

/// libtorch's C++ ABI, as the torch that torch-sys used reports it (pip wheels since 2.7: 1).
fn cxx11_abi() -> &'static str {
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
    let out = Command::new(python)
        .args(["-c", "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))"])
        .output()
        .expect("run python to ask torch for its C++ ABI");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "0" => "0",
        "1" => "1",
        other => panic!("torch reported C++ ABI {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}
