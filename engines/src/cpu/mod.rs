//! CPU engines on candle-core: `dense-cpu` and `dsa-cpu` (f32 and bf16).
//! (Placeholder: every case is unsupported until the candle engines land.)

use ctxcost_core::{Case, Inputs};

use crate::{Engine, EngineError, Output, Support, Timing};

macro_rules! placeholder {
    ($name:ident, $id:literal) => {
        /// Placeholder engine.
        pub struct $name;
        impl $name {
            pub fn new() -> Self {
                Self
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Engine for $name {
            fn id(&self) -> &str {
                $id
            }
            fn timer(&self) -> &'static str {
                "monotonic-clock"
            }
            fn supports(&self, _case: &Case) -> Support {
                Support::No("not implemented yet".into())
            }
            fn prepare(&mut self, _: &Case, _: &Inputs) -> Result<(), EngineError> {
                Err(EngineError::Unsupported("not implemented yet".into()))
            }
            fn run(&mut self) -> Result<Timing, EngineError> {
                Err(EngineError::State("not prepared".into()))
            }
            fn output(&mut self) -> Result<Output, EngineError> {
                Err(EngineError::State("not prepared".into()))
            }
        }
    };
}
placeholder!(DenseCpu, "dense-cpu");
placeholder!(DsaCpu, "dsa-cpu");
