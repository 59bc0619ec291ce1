//! An rpath to the libtorch that torch-sys linked, so that this crate's tests and examples run
//! without LD_LIBRARY_PATH; dependents get the directory as DEP_FERROVOD_TCH_LIBTORCH_LIB.

fn main() {
    // torch-sys (`links = "tch"`) publishes the directory it linked against.
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:libtorch_lib={dir}");
    }
}
