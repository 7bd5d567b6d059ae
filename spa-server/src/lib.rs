//! posternd server library.
