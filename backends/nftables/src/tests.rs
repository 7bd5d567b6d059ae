//! Backend logic against a recording fake runner (no root needed).
