from himl.train.main import run

run()
