#![no_std]
// This file exists so that `agent` can name this crate as a build-dependency (which makes cargo
// rebuild the agent when the programs change); the programs themselves are in `main.rs`.
