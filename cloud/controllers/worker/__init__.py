"""The Worker controller (standalone mode): Worker objects go down to their node; phases come up."""
