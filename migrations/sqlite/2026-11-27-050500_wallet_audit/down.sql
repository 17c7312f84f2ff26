DROP TABLE wallet_audit;
