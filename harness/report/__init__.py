"""The gate report (HTML, self-contained) and the CI artifacts (junit.xml)."""
