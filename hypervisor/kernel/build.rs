//! Links the kernel with `decoder-layout.ld`, which only adds to the linker's default layout.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-arg-bins=-T{dir}/decoder-layout.ld");
    println!("cargo:rerun-if-changed=decoder-layout.ld");
}
