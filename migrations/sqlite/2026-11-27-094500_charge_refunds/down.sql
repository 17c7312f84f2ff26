DROP TABLE charge_refunds;
