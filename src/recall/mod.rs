//! Long-context recall: JSON key-value retrieval prompts ([`prompt`]), greedy generation
//! ([`generate`]) and the SVG heat map of the results ([`heatmap`]).
pub mod generate;
pub mod heatmap;
pub mod prompt;
