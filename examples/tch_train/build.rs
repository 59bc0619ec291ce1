//! An rpath to libtorch (handed on by ferrovod-tch), so the binary runs without LD_LIBRARY_PATH.

fn main() {
    if let Ok(dir) = std::env::var("DEP_FERROVOD_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
