"""The centre receiver: stores what gateways send and acknowledges it end to end."""
