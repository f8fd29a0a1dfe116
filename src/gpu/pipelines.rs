//! Compute pipelines: built from WGSL once per (shader, entry point, constants) and cached.

use super::limits::{PipelineNeeds, Violation};
use super::Gpu;

/// A WGSL source embedded at compile time (the constants live in `kernels`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
}

impl Gpu {
    /// Build a compute pipeline from WGSL with a layout derived from the entry point.
    pub fn pipeline(&self, shader: &Shader, entry: &str) -> wgpu::ComputePipeline {
        self.pipeline_with(shader, entry, &[])
    }

    /// The pipeline for (shader, entry point, override constants), built on first request
    /// and shared after.
    pub fn pipeline_with(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> wgpu::ComputePipeline {
        let key = format!("{}:{entry}:{constants:?}", shader.name);
        if let Some(p) = self
            .pipelines
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
        {
            return p;
        }
        let pipeline = match self.fits(shader, entry, constants) {
            Ok(writable) => self.build_pipeline(shader, entry, constants, writable),
            Err(v) => {
                self.violations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(v);
                self.placeholder()
            }
        };
        if let Ok(mut c) = self.pipelines.lock() {
            c.insert(key, pipeline.clone());
        }
        pipeline
    }

    /// Whether (shader, entry point, constants) fits the device's limits, by reflection of
    /// the entry point, and if so its writable bindings. A source naga cannot read is left
    /// to wgpu to report.
    fn fits(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Vec<u32>, Violation> {
        let Ok(needs) = PipelineNeeds::reflect(shader.source, entry, constants) else {
            return Ok(Vec::new());
        };
        needs.check(&self.limits).map_err(|e| Violation {
            pipeline: format!("{}:{entry}", shader.name),
            detail: e.to_string(),
        })?;
        Ok(needs.writable)
    }

    /// A do-nothing pipeline standing in for one that does not fit: dispatches of it record
    /// nothing, and `check_limits` reports the one it replaced.
    fn placeholder(&self) -> wgpu::ComputePipeline {
        self.placeholder
            .get_or_init(|| {
                let shader = Shader {
                    name: "placeholder",
                    source: "@compute @workgroup_size(1) fn placeholder() {}",
                };
                self.build_pipeline(&shader, "placeholder", &[], Vec::new())
            })
            .clone()
    }

    pub(super) fn is_placeholder(&self, pipeline: &wgpu::ComputePipeline) -> bool {
        self.placeholder.get() == Some(pipeline)
    }

    fn build_pipeline(
        &self,
        shader: &Shader,
        entry: &str,
        constants: &[(&str, f64)],
        writable: Vec<u32>,
    ) -> wgpu::ComputePipeline {
        let module = self.module(shader);
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let info = PipelineInfo {
            family: shader.name,
            entry: entry.to_string(),
            writable,
        };
        if let Ok(mut f) = self.pipeline_info.lock() {
            f.insert(pipeline.clone(), info);
        }
        pipeline
    }

    pub fn module(&self, shader: &Shader) -> wgpu::ShaderModule {
        #[cfg(all(target_arch = "wasm32", feature = "web"))]
        let source = match self.caps.subgroups {
            true => super::web_subgroups::enable_directive(shader.source),
            false => shader.source.into(),
        };
        #[cfg(not(all(target_arch = "wasm32", feature = "web")))]
        let source: std::borrow::Cow<str> = shader.source.into();
        self.device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wgpu::ShaderSource::Wgsl(source),
            })
    }
}

#[derive(Clone)]
pub(super) struct PipelineInfo {
    pub(super) family: &'static str,
    pub(super) entry: String,
    pub(super) writable: Vec<u32>,
}

impl Gpu {
    /// Ok when every entry point of `shader` fits the device's limits (with its override
    /// constants at their defaults), else the first that does not and why. Kernel families
    /// choose a specialisation only where it fits, so the portable path runs otherwise.
    /// Kept per shader: a CPU shader appended to a portable one is thousands of lines, and
    /// reflecting it costs about a second in the browser's wasm.
    pub fn fits_limits(&self, shader: &Shader) -> Result<(), String> {
        if let Some(known) = self
            .limits_fit
            .lock()
            .ok()
            .and_then(|k| k.get(shader.name).cloned())
        {
            return known;
        }
        let fits = self.reflect_limits(shader);
        if let Ok(mut known) = self.limits_fit.lock() {
            known.insert(shader.name, fits.clone());
        }
        fits
    }

    fn reflect_limits(&self, shader: &Shader) -> Result<(), String> {
        let (module, info) =
            PipelineNeeds::parse(shader.source).map_err(|e| format!("{}: {e}", shader.name))?;
        for ep in &module.entry_points {
            let needs = PipelineNeeds::reflect_parsed(&module, &info, &ep.name, &[])
                .map_err(|e| format!("{}:{}: {e}", shader.name, ep.name))?;
            needs
                .check(&self.limits)
                .map_err(|e| format!("{}:{} {e}", shader.name, ep.name))?;
        }
        Ok(())
    }
}
