-- One PostgreSQL server, three databases: Airflow's metadata, the Darkroom catalog and
-- MLflow's backend store. Run once by the postgres image at first start
-- (/docker-entrypoint-initdb.d) and by tests/integration on their throwaway cluster.
CREATE ROLE airflow LOGIN PASSWORD 'airflow';
CREATE DATABASE airflow OWNER airflow;
CREATE DATABASE darkroom OWNER airflow;
CREATE DATABASE mlflow OWNER airflow;
