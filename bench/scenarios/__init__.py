"""The fault drills and what they are built from: the tests assert, `bench drills` reports."""
