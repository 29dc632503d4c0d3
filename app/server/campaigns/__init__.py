"""Campaigns: the sales and promotions copy may talk about (marketers)."""
