//! Helpers shared by the K-quant quantizers (stub).
