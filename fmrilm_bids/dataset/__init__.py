"""Reading the input BIDS dataset and writing the derivatives tree."""
