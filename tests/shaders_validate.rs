//! Every WGSL file parses and validates with naga. Needs no adapter.

use vit_wgpu::kernels::ALL_SHADERS;

#[test]
fn every_shader_parses_and_validates_with_naga() {
    let mut failures = Vec::new();
    for shader in ALL_SHADERS {
        let path = format!("shaders/{}", shader.name);
        let module = match naga::front::wgsl::parse_str(shader.source) {
            Ok(m) => m,
            Err(e) => {
                failures.push(e.emit_to_string_with_path(shader.source, &path));
                continue;
            }
        };
        let mut validator = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        if let Err(e) = validator.validate(&module) {
            failures.push(e.emit_to_string_with_path(shader.source, &path));
        }
    }
    assert!(
        failures.is_empty(),
        "shader errors:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_shader_file_is_registered() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    // shaders/*.wgsl and the CPU-adapter specialisations, shaders/cpu/*.wgsl
    let mut on_disk: Vec<String> = Vec::new();
    for (dir, prefix) in [(root.clone(), ""), (root.join("cpu"), "cpu/")] {
        let files = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wgsl"));
        on_disk.extend(files.map(|n| format!("{prefix}{n}")));
    }
    on_disk.sort();
    let mut registered: Vec<String> = ALL_SHADERS.iter().map(|s| s.name.to_string()).collect();
    registered.sort();
    assert_eq!(
        on_disk, registered,
        "shaders/*.wgsl, shaders/cpu/*.wgsl and kernels::ALL_SHADERS differ"
    );
}
