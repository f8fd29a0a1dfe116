//! Subgroups in the browser. wgpu 30's WebGPU backend neither reports nor requests the
//! `subgroups` feature, so a device it makes has none. `install` wraps the page's
//! `GPUAdapter.prototype.requestDevice` to add it whenever the adapter has it, and records
//! that it did (`granted`); `Gpu::module` then puts the `enable subgroups;` directive that
//! Chrome's WGSL compiler needs in front of the shaders that use them.

use wasm_bindgen::JsValue;

const GRANTED: &str = "__vitWgpuSubgroups";

/// Wrap `requestDevice` once per page (later calls find it wrapped).
pub fn install() {
    let code = r#"
        const proto = globalThis.GPUAdapter && GPUAdapter.prototype;
        if (!proto || proto.__vitWgpuWrapped) return;
        const requestDevice = proto.requestDevice;
        proto.requestDevice = function (descriptor) {
            const d = Object.assign({}, descriptor || {});
            const has = this.features.has('subgroups');
            if (has) d.requiredFeatures = [...(d.requiredFeatures || []), 'subgroups'];
            globalThis.__vitWgpuSubgroups = has;
            return requestDevice.call(this, d);
        };
        proto.__vitWgpuWrapped = true;
    "#;
    // a page whose policy forbids `new Function` keeps devices without subgroups
    let _ = js_sys::Function::new_no_args(code).call0(&JsValue::NULL);
}

/// Whether the last device requested has the `subgroups` feature.
pub fn granted() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str(GRANTED))
        .map(|v| v.is_truthy())
        .unwrap_or(false)
}

/// `source` with the directive in front when it calls or declares subgroup builtins (not
/// when a comment names them, as attention.wgsl's does).
pub fn enable_directive(source: &str) -> std::borrow::Cow<'_, str> {
    const USES: [&str; 3] = ["subgroupBroadcast(", "quadSwap", "@builtin(subgroup_"];
    if USES.iter().any(|u| source.contains(u)) {
        format!("enable subgroups;\n{source}").into()
    } else {
        source.into()
    }
}
