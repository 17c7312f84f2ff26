//! The tally client progenitor generates from openapi/openapi-3.0.json.
#![allow(clippy::all, unused)]
include!(concat!(env!("OUT_DIR"), "/codegen.rs"));
